"""Rules for the names users give: run, experiment and split names, sample ids, class names.

Each name ends up in places with limits of their own. What each place allows, and where the
limit comes from:

**A path component** (``<out>/<run name>``, the Ray Train / Tune run folder
``<storage>/<name>``, ``<sweep workdir>/<experiment>``, ``<split>.txt``, ``<id>.png``). Linux
takes any bytes but ``/`` and NUL, at most ``NAME_MAX`` = 255 bytes per component
(``<linux/limits.h>``), counted in UTF-8: ``é`` takes 2 bytes, a CJK character 3, an emoji 4.
The project adds up to 55 bytes to a name (``.<id>.png.XXXXXXXX.tmp`` while a file is written
atomically, ``<run>-round12``, ``<experiment>-train``), so a name has at most
:data:`MAX_NAME_BYTES` = 200 bytes. Also refused (:func:`path_component_problem`): the empty
name, ``.`` and ``..`` (they name the folder itself or its parent), ``\\`` (the separator on
Windows and to many object-store tools), control characters U+0000-U+001F and U+007F-U+009F
(invisible; they break log lines and terminals), lone surrogates (not encodable as UTF-8), and
white space at either end (invisible, and easily lost). A folder the project creates from a
name (run names, sweep experiments: :func:`folder_name_problem`) must also not start with ``.``
(a hidden folder) or ``-`` (read as an option when the name is typed back, e.g.
``wsss compare --experiment NAME``).

**An MLflow experiment name** (:func:`experiment_name_problem`): not empty, at most 256
characters: ``mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH`` (500) and the SQL store's
``experiments.name`` column (``String(256)``, ``mlflow/store/tracking/dbmodels/models.py``),
the smaller wins. No control characters and no white space at either end (as above); any other
text (``/``, quotes, unicode) is kept as it is.

**An MLflow run name**: at most 250 characters (the ``runs.name`` column:
:func:`run_name_limit`). Run names given by users are folders too, and the 200-byte rule is the
stricter one; the names of sweep trial runs (``wsss.tune.tracking.trial_run_name``) are not
folders and are cut to this limit.

**MLflow metric, param and tag keys** (``mlflow.utils.validation``): characters matching
``[/\\w.\\- :]`` (``\\w`` is Unicode: ``é`` and ``水`` pass, emoji and quotes do not; ``:``
not on a Windows server), at most ``MAX_ENTITY_KEY_LENGTH`` = 250 characters, and a key must
be a normalized relative path (``path_not_unique``: no ``.`` or ``..`` part, no leading ``/``,
no ``//``). SQLite and PostgreSQL compare keys exactly; the default collations of MySQL
(``utf8mb4_0900_ai_ci``: case- and accent-insensitive) and SQL Server (``CI_AS``) do not, and
two keys of one run differing only in case collide there (mlflow/mlflow#7857). A class name
becomes the last part of the per-class keys ``iou/<part>``, ``precision/<part>`` and
``recall/<part>`` (:func:`metric_key_part`): NFC-normalized, kept as it is when MLflow allows
it, else each other character (``/``, ``:``, quotes, emoji...) becomes ``_``, and ``.`` and
``..`` become ``_`` and ``__``. :func:`check_class_names` refuses a set of class names whose
parts are longer than 240 characters (250 - ``len("precision/")``) or not distinct once case
and accents are ignored.

**MLflow param and tag values**: any text; params at most ``MAX_PARAM_VAL_LENGTH`` (6,000
characters in MLflow 3.17), tags ``MAX_TAG_VAL_LENGTH`` (8,000): see :func:`param_value_limit`.

**MLflow search filters** (``search_runs(filter_string=...)``): a string literal is quoted with
``'`` or ``"`` and has no escape (``mlflow/utils/search_utils.py``), so a value holding both
quotes cannot be written in a filter: :func:`filter_literal` returns None and the caller
compares that value in Python.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from typing import Callable, Iterable, Sequence

from wsss.errors import WsssError

NAME_MAX = 255  # bytes per path component on Linux (<linux/limits.h>)
SUFFIX_RESERVE = 55  # bytes the project appends to a name (temporary files, -roundN, -train)
MAX_NAME_BYTES = NAME_MAX - SUFFIX_RESERVE
PER_CLASS_METRICS = ("iou", "precision", "recall")  # SegmentationScores.summary() key prefixes
# Fallbacks when a future MLflow moves its constants (values of MLflow 3.17).
_MLFLOW_DEFAULTS = {"MAX_PARAM_VAL_LENGTH": 6000, "MAX_TAG_VAL_LENGTH": 8000,
                    "MAX_ENTITY_KEY_LENGTH": 250, "MAX_EXPERIMENT_NAME_LENGTH": 500,
                    "MAX_PARAMS_TAGS_PER_BATCH": 100, "MAX_BATCH_LOG_REQUEST_SIZE": 1_000_000}
SQL_EXPERIMENT_NAME_LENGTH = 256  # fallback for experiments.name String(256)
SQL_RUN_NAME_LENGTH = 250  # fallback for runs.name String(250)
_KEY_PART_CHAR = re.compile(r"[\w.\- ]")  # MLflow's key characters less "/" and ":"


class InvalidNameError(WsssError, ValueError):
    """A user-given name cannot be used where it goes; the message names it and the rule."""


@functools.cache
def mlflow_limit(name: str) -> int:
    """The constant ``name`` of ``mlflow.utils.validation`` (e.g. ``MAX_PARAM_VAL_LENGTH``),
    or its MLflow 3.17 value when this MLflow has no such constant."""
    try:
        from mlflow.utils import validation
    except ImportError:  # pragma: no cover - MLflow is a dependency
        return _MLFLOW_DEFAULTS[name]
    value = getattr(validation, name, None)
    return value if isinstance(value, int) and value > 0 else _MLFLOW_DEFAULTS[name]


def param_value_limit() -> int:
    """Characters an MLflow param value may have (``MAX_PARAM_VAL_LENGTH``)."""
    return mlflow_limit("MAX_PARAM_VAL_LENGTH")


def tag_value_limit() -> int:
    """Characters an MLflow tag value may have (``MAX_TAG_VAL_LENGTH``)."""
    return mlflow_limit("MAX_TAG_VAL_LENGTH")


@functools.cache
def experiment_name_limit() -> int:
    """Characters an experiment name may have: the smaller of MLflow's validation limit and
    the SQL store's ``experiments.name`` column."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlExperiment

        column = SqlExperiment.__table__.c.name.type.length or SQL_EXPERIMENT_NAME_LENGTH
    except (ImportError, AttributeError):  # pragma: no cover - a future MLflow
        column = SQL_EXPERIMENT_NAME_LENGTH
    return min(mlflow_limit("MAX_EXPERIMENT_NAME_LENGTH"), column)


@functools.cache
def run_name_limit() -> int:
    """Characters an MLflow run name may have: the SQL store's ``runs.name`` column."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlRun

        return SqlRun.__table__.c.name.type.length or SQL_RUN_NAME_LENGTH
    except (ImportError, AttributeError):  # pragma: no cover - a future MLflow
        return SQL_RUN_NAME_LENGTH


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs")


def _text_problem(name: str) -> str | None:
    """Problems every name shares: empty, control characters, white space at either end."""
    if not name:
        return "is empty"
    bad = sorted({ch for ch in name if _is_control(ch)})
    if bad:
        return (f"contains the control character(s) {', '.join(f'U+{ord(c):04X}' for c in bad)}"
                f" (invisible, they break log lines)")
    if name[0].isspace() or name[-1].isspace():
        return "starts or ends with white space (invisible, and easily lost)"
    return None


def path_component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one file or folder name (None: it can); see the module doc."""
    problem = _text_problem(name)
    if problem:
        return problem
    if name in (".", ".."):
        return f"is {name!r}, which names a folder itself or its parent, not a file"
    for sep in ("/", "\\"):
        if sep in name:
            return f"contains {sep!r}, a folder separator"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (f"has {size} bytes in UTF-8; at most {MAX_NAME_BYTES} fit in a file name "
                f"(Linux allows {NAME_MAX} per path component, the project adds up to "
                f"{SUFFIX_RESERVE})")
    return None


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a folder the project creates (None: it can): a path component
    that does not start with ``.`` (hidden) or ``-`` (read as an option)."""
    problem = path_component_problem(name)
    if problem:
        return problem
    if name[0] == ".":
        return "starts with '.', which would make a hidden folder"
    if name[0] == "-":
        return "starts with '-', which reads as an option when the name is typed back"
    return None


def experiment_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an MLflow experiment name (None: it can); see the module doc."""
    problem = _text_problem(name)
    if problem:
        return problem
    limit = experiment_name_limit()
    if len(name) > limit:
        return (f"has {len(name)} characters; MLflow's SQL stores hold at most {limit} "
                f"(experiments.name)")
    return None


def sweep_experiment_problem(name: str) -> str | None:
    """Why ``name`` cannot be a sweep's experiment, which is also its Tune run name and a
    folder under ``--workdir`` and ``--storage-path`` (None: it can)."""
    return experiment_name_problem(name) or folder_name_problem(name)


def shown(name: str, width: int = 60) -> str:
    """``repr(name)``, cut to about ``width`` characters for messages (the length added)."""
    text = repr(name)
    return text if len(text) <= width else f"{text[:width]}... ({len(name)} characters)"


def check_name(name: str, what: str, rule: Callable[[str], str | None],
               purpose: str = "") -> str:
    """``name`` when ``rule`` finds no problem with it; else InvalidNameError
    ``"<what> '<name>' <problem> (<purpose>)"`` (``what``: the option or key, e.g.
    ``--run-name``; ``purpose``: where the name goes)."""
    problem = rule(name)
    if problem:
        raise InvalidNameError(f"{what} {shown(name)} {problem}"
                               + (f" ({purpose})" if purpose else ""))
    return name


def metric_key_part(name: str) -> str:
    """A class name as the last part of an MLflow metric key (see the module doc): NFC text
    with every character MLflow refuses in a key, and ``/`` and ``:``, replaced by ``_``;
    ``.`` and ``..`` (not allowed as a key part) become ``_`` and ``__``."""
    text = unicodedata.normalize("NFC", name)
    part = "".join(ch if _KEY_PART_CHAR.fullmatch(ch) else "_" for ch in text)
    return "_" * len(part) if part in (".", "..") else part


def store_form(key: str) -> str:
    """``key`` as the case- and accent-insensitive collations of MySQL and SQL Server see it:
    compatibility-decomposed, accents dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", key)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def check_class_names(names: Sequence[str]) -> tuple[str, ...]:
    """The metric key part (:func:`metric_key_part`) of each class name; InvalidNameError for
    a name with a control character, a name listed twice, a part too long for
    ``precision/<part>`` (250 characters), or two parts alike once case and accents are
    ignored (they would collide as metric keys on MySQL and SQL Server)."""
    room = mlflow_limit("MAX_ENTITY_KEY_LENGTH") - max(len(p) + 1 for p in PER_CLASS_METRICS)
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise InvalidNameError(f"duplicate class names: {', '.join(map(shown, twice))} "
                               f"listed more than once")
    seen: dict[str, str] = {}
    for name in names:
        problem = _text_problem(name)
        if problem:
            raise InvalidNameError(f"class name {shown(name)} {problem}")
        part = metric_key_part(name)
        if len(part) > room:
            raise InvalidNameError(f"class name {shown(name)} has {len(part)} characters; at "
                                   f"most {room} fit in the metric key 'precision/<name>' "
                                   f"(MLflow keys hold {room + len('precision/')})")
        first = seen.setdefault(store_form(part), name)
        if first != name:
            raise InvalidNameError(_collision(first, name))
    return tuple(metric_key_part(n) for n in names)


def _collision(first: str, second: str) -> str:
    """The message for two class names whose metric keys collide."""
    one, two = metric_key_part(first), metric_key_part(second)
    if one == two:
        return (f"class names {shown(first)} and {shown(second)} both give the metric key "
                f"'iou/{one}' (a per-class key is the name in Unicode NFC form with each "
                f"character MLflow keys do not allow made '_'); rename one of them")
    return (f"class names {shown(first)} and {shown(second)} give the metric keys 'iou/{one}' "
            f"and 'iou/{two}', one key to stores that ignore case and accents (MySQL, SQL "
            f"Server; mlflow/mlflow#7857); rename one of them")


def mapped_class_keys(names: Iterable[str]) -> dict[str, str]:
    """``{key part: class name}`` for the class names whose metric key part differs from the
    name (for logging the mapping)."""
    return {metric_key_part(n): n for n in names if metric_key_part(n) != n}


def filter_literal(value: str) -> str | None:
    """``value`` as a string literal of an MLflow search filter (quoted with ``'``, or ``"``
    when it holds a ``'``); None when it holds both quotes, which no literal can express."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None
