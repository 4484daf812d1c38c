"""The registry of gate rules, in the order their findings are reported.

One small class per rule id, grouped in modules named for what they hold: `schema` (SCH),
`identity` (ID), `time` (TIME), `chain` (CHN, CYC, REV), `attenuation` (ATT, CON), `limits`
(DEP, BUD, MOD) and `environment` (DIR, ROLE).
"""

from __future__ import annotations

from gate.rules.attenuation import ConstraintsInherited, FreeTextCapability, ScopesAttenuate
from gate.rules.base import Rule
from gate.rules.chain import CapabilityRestated, DelegatorContinuity, NoCycle, NotRevoked, OriginUnchanged
from gate.rules.environment import DirectoryAllowed, RoleKnown
from gate.rules.identity import DelegatedToIsRole, NoSelfDelegation, RequesterIsAuthority, TaskIdMatches
from gate.rules.limits import BudgetConserved, DepthLimit, ModelAllowed
from gate.rules.schema import SchemaShape, SchemaTimestamps
from gate.rules.time import Expiry, NotInFuture, TimestampOrder

__all__ = ["RULES", "Rule", "rule"]

RULES: tuple[Rule, ...] = (
    SchemaShape(),
    SchemaTimestamps(),
    RequesterIsAuthority(),
    TaskIdMatches(),
    DelegatedToIsRole(),
    NoSelfDelegation(),
    TimestampOrder(),
    NotInFuture(),
    Expiry(),
    DelegatorContinuity(),
    CapabilityRestated(),
    OriginUnchanged(),
    ScopesAttenuate(),
    FreeTextCapability(),
    ConstraintsInherited(),
    DepthLimit(),
    NoCycle(),
    NotRevoked(),
    BudgetConserved(),
    DirectoryAllowed(),
    RoleKnown(),
    ModelAllowed(),
)

_BY_ID = {r.id: r for r in RULES}


def rule(rule_id: str) -> Rule:
    """The registered rule with this id; KeyError names the known ids."""
    try:
        return _BY_ID[rule_id]
    except KeyError:
        raise KeyError(f"unknown rule {rule_id!r}; known: {', '.join(_BY_ID)}") from None
