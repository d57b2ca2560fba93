"""
The errors an operator, a state or the fleet runner acts on differently, one class each.
Every one is a ``CommandExecutionError`` (Salt reports it as any module's error:
``ERROR: <message>``, retcode 1) and keeps its facts as plain data in ``facts`` (read
as attributes too), so the privilege pipe carries them from the deploy user's process
and :py:func:`as_data` hands them to the fleet runner.
"""

from salt.exceptions import CommandExecutionError


class VumiError(CommandExecutionError):
    """A deploy-side failure the bundle names. ``facts``: what it knows, plain data."""

    def __init__(self, message, **facts):
        super().__init__(message)
        self.facts = facts

    def __getattr__(self, name):
        """A fact as an attribute (``exc.stage``): ``facts`` is the one place they are kept."""
        try:
            return self.__dict__["facts"][name]
        except KeyError:
            raise AttributeError(name) from None


class Locked(VumiError):
    """The environment is locked (``vumi.lock``): deploys are refused until ``vumi.unlock``. Facts: user, since, reason."""


class Held(VumiError):
    """A fleet deploy of another release holds the environment. Facts: release, user, jid, since, until."""


class Busy(VumiError):
    """Another job held a lock for longer than this one waits. Facts: lock (its file), holder."""


class StageFailed(VumiError):
    """A stage of a deploy failed; ``current`` did not move to it. Facts: stage, release, kept (the half-built release)."""


class HealthFailed(StageFailed):
    """The new release's webapp did not answer its health check. Facts: stage, release, evidence, log."""


class RollStopped(VumiError):
    """A port of a rolling start, stop or restart failed: the roll stopped there. Facts: port, done, left."""


CLASSES = {cls.__name__: cls for cls in (VumiError, Locked, Held, Busy, StageFailed, HealthFailed, RollStopped)}


def as_data(exc):
    """``exc`` as plain data: ``{"kind": ..., "message": ..., <facts>}`` (``kind``: its class's name, or ``VumiError``)."""
    kind = type(exc).__name__ if type(exc).__name__ in CLASSES else "VumiError"
    return {"kind": kind, "message": str(exc), **getattr(exc, "facts", {})}


def from_data(data):
    """The error :py:func:`as_data` described, as its class again."""
    facts = {k: v for k, v in data.items() if k not in ("kind", "message")}
    return CLASSES.get(data.get("kind"), VumiError)(str(data.get("message")), **facts)
