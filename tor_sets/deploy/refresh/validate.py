"""Whether a new rules text loads, checked before it replaces the deployed file.

Exports :func:`validate_rules` and :data:`VALIDATIONS` (the ways it may be asked for): the YAML shape and a complete
expansion of every rule (:func:`~tor_sets.falco.load.load_rules`), then, when asked or when one is present, a real
engine loading the text (:func:`tor_sets.verify.validate_text`).
"""

from __future__ import annotations

import yaml

from tor_sets.errors import RuleError, UsageError
from tor_sets.falco.load import RuleSet, load_rules
from tor_sets.falco.model import CURRENT_FALCO, Profile, profile_for
from tor_sets.verify import pick_validator, validate_text

__all__ = ["VALIDATIONS", "validate_rules"]

#: how ``validate`` may be asked for; ``auto`` is ``engine`` when an engine is present, else ``yaml``
VALIDATIONS = ("auto", "none", "yaml", "engine")
#: libyaml's safe loader when PyYAML was built with it (20x faster on a 120 kB rules file)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def validate_rules(text: str, how: str = "auto", *, engine: str | None = None, profile: Profile | None = None) -> str:
    """Check that a rules text loads, before it replaces the deployed file.

    ``yaml``: it parses, is a sequence of items, every list's ``items`` is a sequence, every rule has desc,
    condition, output and priority, and :func:`~tor_sets.falco.load.load_rules` expands every rule completely.
    ``engine``: that, and a real engine loads it (:meth:`~tor_sets.engines.Engine.validate`: ``falco -V`` on real
    Falco; ``engine`` by name, else the best present for ``profile``). ``auto``: ``engine`` when an engine is
    present, else ``yaml``. ``none``: nothing.

    Returns:
        What was done: ``none``, ``yaml`` or ``engine NAME VERSION``.

    Raises:
        UsageError: ``how`` is not one of :data:`VALIDATIONS`.
        RuleError: the rules do not load.
        EngineError: the engine failed otherwise (``EngineUnavailable`` when ``engine`` was required).
    """
    if how not in VALIDATIONS:
        raise UsageError(f"validate must be one of {', '.join(VALIDATIONS)}")
    if how == "none":
        return "none"
    try:
        _check_yaml(text)
    except RuleError as exc:
        raise RuleError(f"the new rules failed validation: {exc}") from exc
    if how == "yaml":
        return "yaml"
    chosen = pick_validator(engine, profile=profile or profile_for(CURRENT_FALCO), required=how == "engine")
    if chosen is None:
        return "yaml"
    try:
        validate_text(text, chosen)
    except RuleError as exc:
        raise RuleError(f"the new rules failed validation on {exc}") from exc
    return f"engine {chosen.name} {chosen.version()}"


def _check_yaml(text: str) -> RuleSet:
    try:
        doc = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise RuleError(f"the new rules are not valid YAML: {_first_line(exc)}") from exc
    if not isinstance(doc, list) or not doc:
        raise RuleError("the new rules are not a YAML sequence of items")
    rules = 0
    for number, item in enumerate(doc, 1):
        if not isinstance(item, dict):
            raise RuleError(f"item {number} of the new rules is not a mapping")
        if "list" in item and not isinstance(item.get("items"), list):
            raise RuleError(f"list {str(item['list'])[:80]!r}: 'items' is not a sequence")
        if "rule" in item and not {"append", "override"} & item.keys():
            missing = [k for k in ("desc", "condition", "output", "priority") if item.get(k) in (None, "")]
            if missing:
                raise RuleError(f"rule {str(item['rule'])[:80]!r}: missing {', '.join(missing)}")
            rules += 1
    if not rules:
        raise RuleError("the new rules file holds no rule")
    ruleset = load_rules(text)
    for rule in ruleset.rules.values():
        if not rule.complete:
            raise RuleError(f"rule {rule.name!r}: cannot resolve {', '.join(rule.unresolved)}")
    return ruleset


def _first_line(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]
