"""One base for the errors a user can fix: ``wsss`` catches it and prints the message."""

from __future__ import annotations

import pytest

from wsss.core.native_crf import NativeCrash
from wsss.data.errors import DatasetError
from wsss.errors import ConfigError, WsssError
from wsss.names import InvalidNameError
from wsss.pipeline.manifest import JobConflict
from wsss.storage import OutputError
from wsss.tracking import TrackingError
from wsss.train.checkpoint import CheckpointError
from wsss.train.reporting import TrainingError

KINDS = {ConfigError: ValueError, DatasetError: ValueError, CheckpointError: ValueError,
         OutputError: ValueError, JobConflict: ValueError, InvalidNameError: ValueError,
         TrackingError: RuntimeError, TrainingError: RuntimeError, NativeCrash: RuntimeError}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_error_kind_is_a_wsss_error_and_keeps_its_builtin_base(kind):
    assert issubclass(kind, WsssError) and issubclass(kind, KINDS[kind])


def test_the_cli_prints_any_wsss_error_and_exits_2(monkeypatch, capsys):
    from wsss import cli

    def fail(args):
        raise TrainingError("no optimizer step")

    monkeypatch.setattr(cli, "preflight", lambda args: None)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["predict"].set_defaults(func=fail)
    assert cli.main(["predict", "--checkpoint", "c.pt", "--out", "o"]) == 2
    assert "wsss predict: error: no optimizer step" in capsys.readouterr().err
