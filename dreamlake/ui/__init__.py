"""The web page for looking at sessions: ``dreamlake ui`` and ``dreamlake-server``'s ``/ui``.

    from dreamlake.ui import create_app, LocalStoreSource
    app = create_app(LocalStoreSource("./data"))   # a Starlette app; mount it anywhere
"""

from ._app import create_app
from ._source import DataSource, LocalStoreSource, NotFound, Row

__all__ = ["create_app", "DataSource", "LocalStoreSource", "NotFound", "Row"]
