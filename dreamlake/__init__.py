"""DreamLake: experiment and sensor logging that never blocks the loop that logs.

    from dreamlake import Session
    with Session(prefix="ws/run", root="./data") as session:
        session.track("train").append(loss=0.5, step=1)

    run = dreamlake.open_session("ws/run", root="./data")   # read-only
    run.track("train").to_pandas()
"""

from ._errors import DreamLakeError, FlushTimeout, SessionStateError, SinkError
from ._reader import SessionReader, TrackReader, open_session
from ._session import LOG_LEVELS, Session, dreamlake_session

__all__ = [
    "Session",
    "dreamlake_session",
    "open_session",
    "SessionReader",
    "TrackReader",
    "LOG_LEVELS",
    "DreamLakeError",
    "SessionStateError",
    "FlushTimeout",
    "SinkError",
    "__version__",
]

__version__ = "0.1.0"
