"""The base of every error wsss raises for a problem the user can fix, and the config's own.

Each kind keeps the built-in class it always had (``ValueError`` or ``RuntimeError``) beside
:class:`WsssError`, so code that caught that one still does; ``wsss`` (``wsss.cli``) catches
:class:`WsssError` and prints its message. The kinds live next to the code that raises them:

=========================================  ======================================================
``ConfigError`` (here)                     a config key or value
``wsss.data.errors.DatasetError``          a dataset file
``wsss.train.checkpoint.CheckpointError``  a checkpoint file
``wsss.storage.OutputError``               an output folder (``wsss.pipeline.manifest.
                                           JobConflict``: it holds another job's outputs)
``wsss.names.InvalidNameError``            a name given on the command line
``wsss.tracking.TrackingError``            the MLflow tracking server
``wsss.train.reporting.TrainingError``     a training run that learnt nothing
``wsss.core.native_crf.NativeCrash``       the process running pydensecrf died
=========================================  ======================================================
"""


class WsssError(Exception):
    """A problem the message explains (a file, a value, a service), not a bug in wsss."""


class ConfigError(WsssError, ValueError):
    """A configuration key or value is invalid; the message names the key and the problem."""
