"""The promotion policy: one YAML file of rules, matched by model-name glob, that every service reads.

A policy is configuration people edit by hand and every promotion cites by revision, so parsing is
strict: an unknown key, a typo'd operator or a duplicated key is an error naming the file and line,
never a silently ignored setting. The revision hashes the meaning, not the text, so reformatting or
re-commenting a file keeps it and any semantic change gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shared.manifest import MAX_MANIFEST_FILES
from shared.model_signatures import TrustedKey, load_trusted_key

GiB = 1024**3
METADATA_FIELDS = ("dataset", "description", "run_id", "signature")
# Relative tolerance for float comparisons: metrics travel through JSON and arithmetic, so
# 0.1 + 0.2 must still meet ">= 0.3".
EPSILON = 1e-12
_ARTIFACT_FORMAT = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,31}$")
_THRESHOLD = re.compile(r"^\s*(>=|<=|==|>|<)\s*(\S+)\s*$")
_DURATION = re.compile(r"^(?:\d+[wdhms])+$")
_DURATION_PART = re.compile(r"(\d+)([wdhms])")
_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_MERGE_TAG = "tag:yaml.org,2002:merge"


class PolicyError(ValueError):
    """The policy cannot be used; one line per problem, each naming the file and line."""


def _close(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b
    return abs(a - b) <= EPSILON * max(1.0, abs(a), abs(b))


def _number_text(value: float) -> str:
    """Shortest exact spelling: 0.9 -> '0.9', 50.0 -> '50'; the revision hashes this."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


# ---------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Threshold:
    """`metric OP value`, optionally only for one suite's result (`suite/metric`)."""

    metric: str
    op: str
    value: float
    suite: str | None = None

    def holds(self, actual: float) -> bool:
        """Compare within EPSILON: at the boundary `>=`/`<=`/`==` hold and `>`/`<` do not."""
        if math.isnan(actual):
            return False
        close = _close(actual, self.value)
        if self.op == ">=":
            return close or actual > self.value
        if self.op == ">":
            return not close and actual > self.value
        if self.op == "<=":
            return close or actual < self.value
        if self.op == "<":
            return not close and actual < self.value
        return close  # "=="

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.metric}" if self.suite else self.metric

    def __str__(self) -> str:
        return f"{self.op} {_number_text(self.value)}"


@dataclass(frozen=True)
class ChampionRule:
    """A candidate must beat the production version on `metric` by `min_improvement`."""

    metric: str
    direction: Literal["higher", "lower"] = "higher"
    min_improvement: float = 0.0

    def beats(self, candidate: float, champion: float) -> bool:
        if math.isnan(candidate) or math.isnan(champion):
            return False
        if self.direction == "higher":
            target = champion + self.min_improvement
            return candidate >= target or _close(candidate, target)
        target = champion - self.min_improvement
        return candidate <= target or _close(candidate, target)


@dataclass(frozen=True)
class Retention:
    keep_restorable: int = 2
    rejected_grace: timedelta = timedelta(days=7)
    staging_max_age: timedelta | None = timedelta(days=30)  # None: never expires


@dataclass(frozen=True)
class ValidationRule:
    max_size_bytes: int | None = 5 * GiB  # None: no limit
    required_metadata: tuple[str, ...] = ()
    allowed_formats: tuple[str, ...] | None = None  # None: any format
    pickle_allow: tuple[str, ...] = ()
    # Files in a directory artifact; max_size_bytes bounds their total.
    max_files: int = MAX_MANIFEST_FILES


@dataclass(frozen=True)
class SigningRule:
    """Model signatures (OpenSSF model signing, key-based): `required` rejects a version whose
    directory has no `model.sig`; a signature that is present is always verified against
    `trusted_keys` (elliptic-curve public keys) and the version's manifest."""

    required: bool = False
    trusted_keys: tuple[TrustedKey, ...] = ()

    @property
    def applies(self) -> bool:
        """Whether validation looks at signatures at all for this rule."""
        return self.required or bool(self.trusted_keys)

    def to_dict(self) -> dict[str, Any]:
        """Keys as fingerprints (SHA-256 of the public key's PEM, as model_signing hints them):
        the same key inline or from a file is the same policy."""
        return {"required": self.required,
                "trusted_keys": [f"sha256:{key.fingerprint}" for key in self.trusted_keys]}


@dataclass(frozen=True)
class Rule:
    match: str
    auto_staging: bool = True
    required_suites: tuple[str, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    champion: ChampionRule | None = None
    approvers: tuple[str, ...] = ()
    required_approvals: int = 1
    rollback: tuple[Threshold, ...] = ()
    retention: Retention = field(default_factory=Retention)
    validation: ValidationRule = field(default_factory=ValidationRule)
    evaluator_not_author: bool | None = None  # None: true when the rule has thresholds
    signing: SigningRule = field(default_factory=SigningRule)

    @property
    def evaluator_must_differ(self) -> bool:
        """Whether QA results from the version's own author are ignored (separation of duties)."""
        return bool(self.thresholds) if self.evaluator_not_author is None else self.evaluator_not_author

    def refuse_approver(self, actor: str, registered_by: str | None) -> str | None:
        """Why `actor` may not move this model's version by hand (None: they may)."""
        if actor not in self.approvers:
            return f"{actor} is not an approver for this model"
        if registered_by is not None and actor == registered_by:
            return f"{actor} registered this version and cannot approve it (separation of duties)"
        return None

    def to_dict(self) -> dict[str, Any]:
        retention, validation = self.retention, self.validation
        return {
            "match": self.match,
            "auto_staging": self.auto_staging,
            "required_suites": list(self.required_suites),
            "thresholds": {t.key: str(t) for t in self.thresholds},
            "evaluator_not_author": self.evaluator_must_differ,
            "champion": None if self.champion is None else {
                "metric": self.champion.metric,
                "direction": self.champion.direction,
                "min_improvement": self.champion.min_improvement,
            },
            "approvers": list(self.approvers),
            "required_approvals": self.required_approvals,
            "rollback": {t.key: str(t) for t in self.rollback},
            "retention": {
                "keep_restorable": retention.keep_restorable,
                "rejected_grace": _seconds(retention.rejected_grace),
                "staging_max_age": _seconds(retention.staging_max_age),
            },
            "validation": {
                "max_size_bytes": validation.max_size_bytes,
                "max_files": validation.max_files,
                "required_metadata": list(validation.required_metadata),
                "allowed_formats": None if validation.allowed_formats is None
                else list(validation.allowed_formats),
                "pickle_allow": list(validation.pickle_allow),
            },
            "signing": self.signing.to_dict(),
        }


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    revision: str
    source: str

    def rule_for(self, name: str) -> Rule:
        """The first rule whose glob matches `name`; the built-in default rule when none does."""
        for rule in self.rules:
            if fnmatchcase(name, rule.match):
                return rule
        return DEFAULT_RULE

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: thresholds as {"auc": ">= 0.9"}, durations in seconds."""
        return {"source": self.source, "revision": self.revision,
                "rules": [rule.to_dict() for rule in self.rules]}


def _seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


def _revision(rules: tuple[Rule, ...]) -> str:
    """Hash of the meaning: set-like lists are sorted, so reordering them changes nothing."""
    canonical = []
    for rule in rules:
        data = rule.to_dict()
        data["required_suites"].sort()
        data["approvers"].sort()
        data["validation"]["required_metadata"].sort()
        data["validation"]["pickle_allow"].sort()
        if data["validation"]["allowed_formats"] is not None:
            data["validation"]["allowed_formats"].sort()
        data["signing"]["trusted_keys"].sort()
        canonical.append(data)
    dump = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(dump.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- problems

Loc = tuple[str | int, ...]
T = TypeVar("T")


class _Bad(ValueError):
    """A scalar is wrong; the caller knows where it is."""


def _where(loc: Loc) -> str:
    text = ""
    for part in loc:
        name = str(part) if str(part).isprintable() else repr(part)  # one line per problem
        text += f"[{part}]" if isinstance(part, int) else (f".{name}" if text else name)
    return text


def _got(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    # Errors reach logs: a file given by mistake (a key, a password file) must not follow.
    return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"


class _Problems:
    """Collects problems and turns a location like rules[0].thresholds.auc into a line."""

    def __init__(self, source: str, root: Node | None) -> None:
        self.source = source
        self.root = root
        self.found: list[tuple[int, str]] = []
        self._loader = yaml.SafeLoader("")

    def add(self, loc: Loc, message: str, *, on_key: bool = False, line: int | None = None) -> None:
        line = line if line is not None else self.line(loc, on_key=on_key)
        where = _where(loc)
        self.found.append((line, f"{self.source}:{line}: {where}: {message}" if where
                           else f"{self.source}:{line}: {message}"))

    def line(self, loc: Loc, *, on_key: bool = False) -> int:
        """Descend the composed nodes along `loc`; stop at the deepest node that exists."""
        node, key_node = self.root, None
        for part in loc:
            if isinstance(node, MappingNode):
                pair = next((p for p in reversed(node.value) if self._is_key(p[0], part)), None)
                if pair is None:
                    break
                key_node, node = pair
            elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
                key_node, node = None, node.value[part]
            else:
                break
        target = key_node if on_key and key_node is not None else node
        return target.start_mark.line + 1 if target is not None else 1

    def _is_key(self, node: Node, part: str | int) -> bool:
        if not isinstance(node, ScalarNode) or node.tag == _MERGE_TAG:
            return False
        try:
            return bool(self._loader.construct_object(node) == part)
        except yaml.YAMLError:
            return bool(node.value == str(part))

    def raise_if_any(self) -> None:
        if self.found:
            lines = dict.fromkeys(text for _, text in sorted(self.found, key=lambda f: f[0]))
            raise PolicyError("\n".join(lines))


# ---------------------------------------------------------------------------- YAML


def _yaml_error(source: str, text: str, exc: yaml.YAMLError) -> PolicyError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(getattr(exc, "position", None), int):  # ReaderError: a bad character
        line = text.count("\n", 0, exc.position) + 1  # type: ignore[attr-defined]
    else:
        line = 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):
        message = f"{context}, {problem}"
    else:
        message = f"{problem} ({context})" if context else problem
    if context and "block scalar" in context:
        message += "; quote threshold values that start with '>', e.g. auc: \">= 0.9\""
    return PolicyError(f"{source}:{line}: invalid YAML: {message}")


def _duplicates(node: Node | None, problems: _Problems, loc: Loc = (), seen: set[int] | None = None) -> None:
    """PyYAML keeps the last of two equal keys; a policy must not silently lose one."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _duplicates(item, problems, (*loc, index), seen)
    elif isinstance(node, MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    problems.add((*loc, key.value), f"duplicate key (first defined on line "
                                 f"{first[(key.tag, key.value)]})", line=line)
                else:
                    first[(key.tag, key.value)] = line
            _duplicates(value, problems, (*loc, key.value if isinstance(key, ScalarNode) else "?"), seen)


# ---------------------------------------------------------------------------- scalars


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number, got {_got(value)}")
    if not math.isfinite(value):
        raise _Bad(f"expected a finite number, got {_got(value)}")
    return float(value)


def _integer(minimum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected an integer, got {_got(value)}")
        if value < minimum:
            raise _Bad(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_got(value)}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_got(value)}")
    return value


def parse_duration(value: object) -> timedelta:
    """'7d', '12h', '30m', '45s', '1w' (or combined, '1d12h') or whole seconds; else ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        seconds = value
    elif isinstance(value, str) and _DURATION.match(value.strip()):
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise _Bad(f"expected a duration such as '7d', '12h', '30m', '45s', '1w' or whole seconds, "
                   f"got {_got(value)}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise _Bad(f"duration {_got(value)} is too long") from None


def parse_size(value: object) -> int:
    """Bytes, or '500MB' (1000^n) / '2GiB' (1024^n); else ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = Decimal(value)
    else:
        found = _SIZE.match(value.strip()) if isinstance(value, str) else None
        if found is None:
            raise _Bad(f"expected a size in bytes or such as '500MB', '2GiB', '10KiB', got {_got(value)}")
        size = Decimal(found[1]) * _SIZE_UNITS[found[2].lower()]
    if size != size.to_integral_value() or size <= 0:
        raise _Bad(f"size must be a positive whole number of bytes, got {_got(value)}")
    return int(size)


def _metadata(value: object) -> str:
    if value not in METADATA_FIELDS:
        raise _Bad(f"unknown metadata {_got(value)}: expected one of {', '.join(METADATA_FIELDS)}")
    return str(value)


def _artifact_format(value: object) -> str:
    if not isinstance(value, str) or not _ARTIFACT_FORMAT.match(value):
        raise _Bad(f"expected a format name such as 'onnx' (lower-case letters, digits, '._+-'), "
                   f"got {_got(value)}")
    return value


def _pickle_pattern(value: object) -> str:
    if not isinstance(value, str) or "." not in value or value != value.strip() or " " in value:
        raise _Bad(f"expected a 'module.name' pattern such as 'mylib.models.*', got {_got(value)}")
    return value


def _direction(value: object) -> Literal["higher", "lower"]:
    if value == "higher":
        return "higher"
    if value == "lower":
        return "lower"
    raise _Bad(f"expected 'higher' or 'lower', got {_got(value)}")


# ---------------------------------------------------------------------------- structure


class _Reader:
    """Turns the constructed YAML into the public types, recording every problem it finds."""

    def __init__(self, problems: _Problems, base_dir: Path | None = None) -> None:
        self.p = problems
        self.base_dir = base_dir  # where relative key paths are (the policy file's directory)

    def scalar(self, value: object, loc: Loc, parse: Callable[[object], T], default: T) -> T:
        try:
            return parse(value)
        except _Bad as exc:
            self.p.add(loc, str(exc))
            return default

    def mapping(self, value: object, loc: Loc, allowed: tuple[str, ...]) -> dict[Any, Any] | None:
        if not isinstance(value, dict):
            self.p.add(loc, f"expected a mapping, got {_got(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.p.add((*loc, key), f"unknown key {_got(key)}; expected one of {', '.join(allowed)}",
                           on_key=True)
        return value

    def items(self, value: object, loc: Loc, parse: Callable[[object], str]) -> tuple[str, ...]:
        """A list (null: empty) of distinct items, in order."""
        if value is None:
            return ()
        if not isinstance(value, list):
            self.p.add(loc, f"expected a list, got {_got(value)}")
            return ()
        parsed = [self.scalar(item, (*loc, index), parse, None) for index, item in enumerate(value)]
        return tuple(dict.fromkeys(item for item in parsed if item is not None))

    def thresholds(self, value: object, loc: Loc) -> tuple[Threshold, ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.p.add(loc, f"expected a mapping of metric to 'OP VALUE', got {_got(value)}")
            return ()
        found = (self.threshold(key, spec, (*loc, key)) for key, spec in value.items())
        return tuple(t for t in found if t is not None)

    def threshold(self, key: object, spec: object, loc: Loc) -> Threshold | None:
        metric: object  # the key itself when it has no suite, checked below
        suite, slash, metric = key.partition("/") if isinstance(key, str) else ("", "", "")
        if not slash:
            suite, metric = "", key
        if not isinstance(metric, str) or not metric.strip() or (slash and not suite.strip()):
            self.p.add(loc, f"expected a key 'metric' or 'suite/metric', got {_got(key)}", on_key=True)
            return None
        found = _THRESHOLD.match(spec) if isinstance(spec, str) else None
        try:
            number = float(found[2]) if found else None
        except ValueError:
            number = None
        if found is None or number is None:
            self.p.add(loc, "expected 'OP VALUE' such as '>= 0.9' (OP one of >= > <= < ==), "
                       f"got {_got(spec)}")
            return None
        if not math.isfinite(number):
            self.p.add(loc, f"threshold value must be a finite number, got {_got(spec)}")
            return None
        return Threshold(metric=metric, op=found[1], value=number, suite=suite or None)

    def champion(self, value: object, loc: Loc) -> ChampionRule | None:
        if value is None:
            return None
        data = self.mapping(value, loc, ("metric", "direction", "min_improvement"))
        if data is None:
            return None
        if "metric" not in data:
            self.p.add(loc, "missing required key 'metric'")
        metric = self.scalar(data.get("metric"), (*loc, "metric"), _text, "?") if "metric" in data else "?"
        direction: Literal["higher", "lower"] = self.field(data, loc, "direction", _direction, "higher")
        improvement = self.field(data, loc, "min_improvement", _non_negative, 0.0)
        return ChampionRule(metric=metric, direction=direction, min_improvement=improvement)

    def field(self, data: dict[Any, Any], loc: Loc, key: str, parse: Callable[[object], T], default: T) -> T:
        return self.scalar(data[key], (*loc, key), parse, default) if key in data else default

    def retention(self, value: object, loc: Loc) -> Retention:
        if value is None:
            return Retention()
        data = self.mapping(value, loc, ("keep_restorable", "rejected_grace", "staging_max_age"))
        if data is None:
            return Retention()
        default = Retention()
        return Retention(
            keep_restorable=self.field(data, loc, "keep_restorable", _integer(0), default.keep_restorable),
            rejected_grace=self.field(data, loc, "rejected_grace", parse_duration, default.rejected_grace),
            staging_max_age=self.field(data, loc, "staging_max_age", _optional_max_age,
                                       default.staging_max_age),
        )

    def validation(self, value: object, loc: Loc) -> ValidationRule:
        if value is None:
            return ValidationRule()
        keys = ("max_size_bytes", "max_files", "required_metadata", "allowed_formats", "pickle_allow")
        data = self.mapping(value, loc, keys)
        if data is None:
            return ValidationRule()
        formats = data.get("allowed_formats")
        if isinstance(formats, list) and not formats:
            self.p.add((*loc, "allowed_formats"),
                       "an empty list rejects every artifact; use null to allow any format")
        return ValidationRule(
            max_size_bytes=self.field(data, loc, "max_size_bytes", _optional_size, ValidationRule.max_size_bytes),
            max_files=self.field(data, loc, "max_files", _file_count, MAX_MANIFEST_FILES),
            required_metadata=self.items(data.get("required_metadata"), (*loc, "required_metadata"),
                                         _metadata),
            allowed_formats=None if formats is None
            else self.items(formats, (*loc, "allowed_formats"), _artifact_format),
            pickle_allow=self.items(data.get("pickle_allow"), (*loc, "pickle_allow"), _pickle_pattern),
        )

    def signing(self, value: object, loc: Loc) -> SigningRule:
        if value is None:
            return SigningRule()
        data = self.mapping(value, loc, ("required", "trusted_keys"))
        if data is None:
            return SigningRule()
        required = self.field(data, loc, "required", _boolean, False)
        keys_loc = (*loc, "trusted_keys")
        found = data.get("trusted_keys")
        if found is not None and not isinstance(found, list):
            self.p.add(keys_loc, f"expected a list of PEM public keys or key file paths, got {_got(found)}")
            found = None
        keys = [self.trusted_key(item, (*keys_loc, index)) for index, item in enumerate(found or [])]
        trusted = tuple(dict.fromkeys(key for key in keys if key is not None))
        if required and not found:
            self.p.add(loc, "required: true needs trusted_keys (at least one public key): signatures "
                            "are checked against keys the policy trusts (keyless Sigstore is not supported)")
        return SigningRule(required=required, trusted_keys=trusted)

    def trusted_key(self, value: object, loc: Loc) -> TrustedKey | None:
        """An inline PEM public key, or the path of a PEM file (relative: to the policy file)."""
        if not isinstance(value, str) or not value.strip():
            self.p.add(loc, f"expected a PEM public key or a key file path, got {_got(value)}")
            return None
        if value.lstrip().startswith("-----BEGIN"):
            pem, where = value.encode(), "inline key"
        else:
            path = Path(value)
            if not path.is_absolute():
                if self.base_dir is None:
                    self.p.add(loc, f"{_got(value)} is a relative path and this policy has no file to be "
                                    "relative to: give an absolute path or the PEM itself")
                    return None
                path = self.base_dir / path
            try:
                pem, where = path.read_bytes(), str(path)
            except OSError as exc:
                self.p.add(loc, f"cannot read the key file {path}: {exc.strerror or exc}")
                return None
        try:
            return load_trusted_key(pem)
        except ValueError as exc:
            self.p.add(loc, f"{where}: {exc}")
            return None

    def rule(self, value: object, loc: Loc) -> Rule | None:
        data = self.mapping(value, loc, _RULE_KEYS)
        if data is None:
            return None
        if "match" not in data:
            self.p.add(loc, "missing required key 'match' (a model-name glob such as 'fraud-*')")
        match = self.field(data, loc, "match", _text, "")
        approvers = self.items(data.get("approvers"), (*loc, "approvers"), _text)
        approvals = self.field(data, loc, "required_approvals", _integer(1), 1)
        if approvers and approvals > len(approvers):
            self.p.add((*loc, "required_approvals"),
                       f"needs {approvals} distinct approvals but only {len(approvers)} approver(s) "
                       "are listed")
        return Rule(
            match=match,
            auto_staging=self.field(data, loc, "auto_staging", _boolean, True),
            required_suites=self.items(data.get("required_suites"), (*loc, "required_suites"), _text),
            thresholds=self.thresholds(data.get("thresholds"), (*loc, "thresholds")),
            champion=self.champion(data.get("champion"), (*loc, "champion")),
            approvers=approvers,
            required_approvals=approvals,
            rollback=self.thresholds(data.get("rollback"), (*loc, "rollback")),
            retention=self.retention(data.get("retention"), (*loc, "retention")),
            validation=self.validation(data.get("validation"), (*loc, "validation")),
            evaluator_not_author=self.field(data, loc, "evaluator_not_author", _boolean, None),
            signing=self.signing(data.get("signing"), (*loc, "signing")),
        )

    def policy(self, value: object) -> tuple[Rule, ...]:
        if value is None:
            self.p.add((), "the policy is empty; expected a mapping with a 'rules' list")
            return ()
        if not isinstance(value, dict):
            # Only the kind of thing: this may not be a policy at all, and its text must not leak.
            kind = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) \
                else f"{type(value).__name__} ({len(str(value))} characters)"
            self.p.add((), f"expected a mapping with a 'rules' list, got {kind}")
            return ()
        data = self.mapping(value, (), ("rules",))
        if data is None:
            return ()
        if "rules" not in data:
            self.p.add((), "missing required key 'rules'")
            return ()
        rules = data["rules"]
        if not isinstance(rules, list) or not rules:
            got = "an empty list" if rules == [] else _got(rules)
            self.p.add(("rules",), f"expected a non-empty list of rules, got {got}")
            return ()
        parsed = (self.rule(rule, ("rules", index)) for index, rule in enumerate(rules))
        return tuple(rule for rule in parsed if rule is not None)


_RULE_KEYS = ("match", "auto_staging", "required_suites", "thresholds", "evaluator_not_author", "champion",
              "approvers", "required_approvals", "rollback", "retention", "validation", "signing")


def _non_negative(value: object) -> float:
    number = _number(value)
    if number < 0:
        raise _Bad(f"must not be negative, got {_got(value)}")
    return number


def _optional_max_age(value: object) -> timedelta | None:
    if value is None:
        return None
    age = parse_duration(value)
    if not age:
        raise _Bad("must be longer than 0 (use null for never)")
    return age


def _optional_size(value: object) -> int | None:
    return None if value is None else parse_size(value)


def _file_count(value: object) -> int:
    count = _integer(1)(value)
    if count > MAX_MANIFEST_FILES:
        raise _Bad(f"at most {MAX_MANIFEST_FILES} (a manifest travels on model.ingested), got {count}")
    return count


# ---------------------------------------------------------------------------- entry points


def parse_policy(text: str, source: str = "<policy>", base_dir: Path | None = None) -> Policy:
    """Parse and check a policy; every problem found is reported at once. Relative key file
    paths (signing.trusted_keys) are read from `base_dir`, the policy file's directory."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, text, exc) from None
    problems = _Problems(source, root)
    _duplicates(root, problems)
    try:
        loader = yaml.SafeLoader("")
        data = loader.construct_document(root) if root is not None else None  # flattens merge keys
    except yaml.YAMLError as exc:
        raise _yaml_error(source, text, exc) from None
    rules = _Reader(problems, base_dir).policy(data)
    problems.raise_if_any()
    return Policy(rules=rules, revision=_revision(rules), source=source)


def load_policy(path: Path | str | None) -> Policy:
    """Read the policy at `path`; None means the built-in default."""
    if path is None:
        return DEFAULT_POLICY
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(f"{path}: cannot read the policy file: {reason}") from None
    return parse_policy(text, str(path), Path(path).parent)


DEFAULT_POLICY_YAML = """\
# The built-in modelreg promotion policy.
#
# Services use it when MODELREG_POLICY_FILE is not set, and its rule applies to any model that
# no rule of your own policy matches. Copy it as the start of your own file.
#
# Rules are tried from top to bottom; the first whose `match` glob fits the model name wins.
rules:
  - match: "*"                 # every model name
    # Move a version to staging by itself once it passed validation and the suites below;
    # false: only a manual promotion moves it.
    auto_staging: true
    # QA suites whose results (metrics.evaluated) a version needs before it is promoted.
    required_suites: [smoke]
    # Gates on the QA metrics: metric -> "OP VALUE", OP one of >= > <= < ==
    # ("suite/metric" applies to one suite's result only). Quote values: ">= 0.9".
    # None here: passing the smoke suite is enough.
    thresholds: {}
    # Ignore QA results reported by the principal that registered the version (separation of
    # duties); when left out: true for rules with thresholds, false otherwise.
    # evaluator_not_author: true
    # Compare with the production version before replacing it, e.g.
    #   champion: {metric: auc, direction: higher, min_improvement: 0.01}
    champion: null
    # Who may request manual promotions, and how many distinct approvers must agree to a
    # manual move to production.
    approvers: []
    required_approvals: 1
    # Production metrics that trigger a rollback when violated (same syntax as thresholds).
    rollback: {}
    retention:
      keep_restorable: 2       # archived versions per model whose artifacts are kept restorable
      rejected_grace: 7d       # how long a rejected version's artifact is kept (w, d, h, m, s)
      staging_max_age: 30d     # a version in staging longer than this is archived; null: never
    validation:
      max_size_bytes: 5GiB     # bigger artifacts are rejected (KB/MB/GB = 1000^n, KiB/MiB/GiB = 1024^n)
      max_files: 1000          # files in a directory artifact (at most 1000); their sizes add up
      required_metadata: []    # any of: signature, dataset, description, run_id
      allowed_formats: null    # null: any format; or a list such as [onnx, safetensors]
      pickle_allow: []         # extra globals a pickle may load, "module.name" globs such as "mylib.models.*"
    # OpenSSF model signatures (`model_signing sign key DIR --private_key key.pem --signature
    # DIR/model.sig`): a directory artifact's top-level model.sig is verified against these
    # elliptic-curve public keys (inline PEM, or PEM file paths relative to this file) and
    # must list exactly the directory's other files; required: true rejects unsigned versions.
    signing:
      required: false
      trusted_keys: []
"""

DEFAULT_POLICY = parse_policy(DEFAULT_POLICY_YAML, "<built-in policy>")
DEFAULT_RULE = DEFAULT_POLICY.rules[0]
