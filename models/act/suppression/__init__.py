"""Recipient suppression policy: per recipient, may the fleet keep mailing it (docs/suppression.md).

Pure and deterministic: driven only by the event times and inputs the caller passes. One
:class:`Suppressor` per input partition (the recipients of a partition are its own)::

    sup = Suppressor(load_config(path), store)         # store: a RecipientStore
    for tick in ticks:
        changes = sup.observe(rows, mon.open_incidents())   # rows: RecipientRows of the tick
        for ch in incident_changes_of_the_tick:
            if ch.action == "closed":
                changes += sup.incident_closed(ch.incident, watermark)
        changes += sup.expire(watermark)
        for c in changes:
            emit(c.to_json())          # {"kind": "suppression", "recipient_key": ..., ...}

Per recipient the states are ``active``, ``suspended`` (until a time), ``quarantined`` (while a
quarantining incident holding it is open) and ``suppressed`` (permanent by default):

* a reply of class ``hard`` or ``soft`` is a *hit* counted by its (class, reason)'s schedule
  (:mod:`models.act.suppression_config`): the n-th hit of the same reason in a message other than
  the last counted one suspends for the schedule's n-th duration or, from ``suppress_after``
  (``known_good_suppress_after`` for a recipient the pipeline saw delivered in another message),
  suppresses. ``block``, ``throttle``, ``transient``, ``config`` and ``other`` replies never count;
* a complaint or an unsubscribe suppresses at once;
* a delivery (in a message other than the last counted hit's) resets the counters: a suspended
  recipient is active again; a suppressed one stays suppressed;
* while a ``false_hard_bounces``, ``block`` or ``provider_outage`` incident is open on the
  recipient's domain, MX operator or provider (a combined ``ip:X|provider:P``: the mail sent
  from X to P), its hard hits only **quarantine** it; hard hits up to ``lookback_s`` before a
  ``false_hard_bounces`` incident opened (``lookback_types``) are quarantined when it opens;
  when the incident closes, its quarantined recipients return to the state they had before (the
  held hits stay in the record as evidence: ``held``, ``last_incident``);
* a suspension ends at ``until`` (:meth:`Suppressor.expire`, or at the recipient's next event);
  an active record with counters or evidence is forgotten ``forget_after_days`` after its last
  event (a tombstone), so the store keeps only what matters.

Hot path (:meth:`Suppressor.observe`): the rows that cannot matter are dropped with numpy (replies
of classes that never count; deliveries of recipients with no state), the store is read once per
call for the distinct recipients left (:class:`RecipientStore`, ``get_many``), and only the rows
of recipients that have or get state go through the per-row transition (:func:`step`), which is
what a naive per-event reference applies to every event (tests compare the two).

Each recipient's state is one fixed 63-byte value (:class:`RecipientState`, ``pack``/``unpack``)
keyed by the pipeline's 64-bit recipient identity; the value carries the full 32-byte key, so an
identity collision is seen (the newer recipient's rows are skipped and counted).

The modules, each importing only those above it (every public name is re-exported here):

* ``state``: the vocabulary (states, reason codes, causes), :class:`RecipientState` and the
  stores (:class:`RecipientStore`, :class:`MemoryStore`);
* ``policy``: :class:`Policy`, :class:`Event` and the per-row transition (:func:`step`,
  :func:`timers`, :func:`relevant`);
* ``record``: the record (:class:`SuppressionChange`, :func:`record_of`,
  :func:`state_from_record`, :func:`may_send`, :class:`RecordError`);
* ``quarantine``: :class:`IncidentLike`, :func:`quarantine_scopes`, :func:`covers`;
* ``indexes``: the suppressor's in-memory indexes (timers, held incidents, recent hard hits);
* ``suppressor``: :class:`Suppressor`.
"""

from models.act.suppression.policy import Event, Policy, Transition, relevant, step, timers
from models.act.suppression.quarantine import IncidentLike, covers, quarantine_scopes
from models.act.suppression.record import (
    EXTRA_KEYS,
    RECORD_KEYS,
    RecordError,
    SuppressionChange,
    may_send,
    record_of,
    state_from_record,
)
from models.act.suppression.state import (
    ACTIVE,
    CAUSES,
    COMPLAINT,
    MANUAL,
    NO_REASON,
    QUARANTINED,
    RECORD_BYTES,
    STATE_CODE,
    STATES,
    SUPPRESSED,
    SUSPENDED,
    UNSUBSCRIBE,
    MemoryStore,
    RecipientState,
    RecipientStore,
    incident_hash,
    reason_code,
    reason_name,
)
from models.act.suppression.suppressor import STATE_FORMAT, Suppressor, SuppressorStats

__all__ = [
    "ACTIVE",
    "CAUSES",
    "COMPLAINT",
    "EXTRA_KEYS",
    "MANUAL",
    "NO_REASON",
    "QUARANTINED",
    "RECORD_BYTES",
    "RECORD_KEYS",
    "STATES",
    "STATE_CODE",
    "STATE_FORMAT",
    "SUPPRESSED",
    "SUSPENDED",
    "UNSUBSCRIBE",
    "Event",
    "IncidentLike",
    "MemoryStore",
    "Policy",
    "RecipientState",
    "RecipientStore",
    "RecordError",
    "SuppressionChange",
    "Suppressor",
    "SuppressorStats",
    "Transition",
    "covers",
    "incident_hash",
    "may_send",
    "quarantine_scopes",
    "reason_code",
    "reason_name",
    "record_of",
    "relevant",
    "state_from_record",
    "step",
    "timers",
]
