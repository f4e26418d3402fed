"""The alarm core: a pure state machine (events and the current time in, records and actions out).

Nothing in this package performs I/O. The gateway persists the records a decision returns and
only then applies them (``AlarmCore.apply``) and carries out the actions. Replaying the journal's
records through ``apply`` rebuilds exactly the same state.
"""

from alarms.actions import AckDevice, Action, Notify
from alarms.core import AlarmCore, Decision, Refusal
from alarms.directory import Directory, Recipient, Staff
from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    CloseRequested,
    Event,
    OnSiteRequested,
    ReceiptConfirmed,
    TechnicalCleared,
)
from alarms.model import Alarm, AlarmType, Hop, HopEntry
from alarms.records import AlarmOpened, HopAdded, Record

__all__ = [
    "AcceptRequested",
    "AckDevice",
    "Action",
    "Alarm",
    "AlarmCore",
    "AlarmOpened",
    "AlarmReceived",
    "AlarmType",
    "CloseRequested",
    "Decision",
    "Directory",
    "Event",
    "Hop",
    "HopAdded",
    "HopEntry",
    "Notify",
    "OnSiteRequested",
    "ReceiptConfirmed",
    "Recipient",
    "Record",
    "Refusal",
    "Staff",
    "TechnicalCleared",
]
