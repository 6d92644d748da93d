"""The vocabulary the delivery modules share."""

from ..models import OutboundMessage, RecipientStatus

#: Message option set by an operator's "retry once without these extensions".
DISABLE_ONCE = "disable_extensions_once"

Status = OutboundMessage.Status
State = RecipientStatus.State
#: Recipient states that still need delivering.
OPEN_STATES = (State.PENDING, State.DEFERRED, State.UNKNOWN)
