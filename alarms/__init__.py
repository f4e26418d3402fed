"""The alarm core: a pure state machine (events and the current time in, records and actions out).

Nothing in this package performs I/O. The gateway persists the records a decision returns and
only then applies them (``AlarmCore.apply``) and carries out the actions. Replaying the journal's
records through ``apply`` rebuilds exactly the same state.
"""

from alarms.actions import AckDevice, Action, Notify, NotifyCentre
from alarms.causes import DEFAULT_CLOSE_CAUSES, RESTORED_CAUSE
from alarms.core import AlarmCore, Decision, Refusal
from alarms.directory import Directory, Recipient, Staff
from alarms.escalation import (
    DEFAULT_LADDER,
    DEFAULT_POLICY,
    RECOMMENDED_POLICY,
    Due,
    EscalationStep,
    TeamPolicy,
)
from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    CentreConfirmed,
    CloseRequested,
    Event,
    ForwardRequested,
    HandBackRequested,
    OnSiteRequested,
    ReceiptConfirmed,
    StaffEvent,
    TakeOverRequested,
    TechnicalCleared,
    TestCompleted,
    Tick,
)
from alarms.model import (
    Alarm,
    AlarmType,
    AttachedRef,
    EscalationEntry,
    EscalationKind,
    Handover,
    HandoverKind,
    Hop,
    HopEntry,
)
from alarms.records import (
    AlarmOpened,
    CentreConfirmation,
    Escalated,
    HopAdded,
    OwnerChanged,
    Record,
    RefAttached,
)
from alarms.roster import Roster, Shift, ShiftSlot, ShiftTimes

__all__ = [
    "DEFAULT_CLOSE_CAUSES",
    "DEFAULT_LADDER",
    "DEFAULT_POLICY",
    "RECOMMENDED_POLICY",
    "RESTORED_CAUSE",
    "AcceptRequested",
    "AckDevice",
    "Action",
    "Alarm",
    "AlarmCore",
    "AlarmOpened",
    "AlarmReceived",
    "AlarmType",
    "AttachedRef",
    "CentreConfirmation",
    "CentreConfirmed",
    "CloseRequested",
    "Decision",
    "Directory",
    "Due",
    "Escalated",
    "EscalationEntry",
    "EscalationKind",
    "EscalationStep",
    "Event",
    "ForwardRequested",
    "HandBackRequested",
    "Handover",
    "HandoverKind",
    "Hop",
    "HopAdded",
    "HopEntry",
    "Notify",
    "NotifyCentre",
    "OnSiteRequested",
    "OwnerChanged",
    "ReceiptConfirmed",
    "Recipient",
    "Record",
    "RefAttached",
    "Refusal",
    "Roster",
    "Shift",
    "ShiftSlot",
    "ShiftTimes",
    "Staff",
    "StaffEvent",
    "TakeOverRequested",
    "TeamPolicy",
    "TechnicalCleared",
    "TestCompleted",
    "Tick",
]
