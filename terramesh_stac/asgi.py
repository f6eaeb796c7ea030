"""The service for an ASGI server: `uvicorn --factory terramesh_stac.asgi:create_app`.

Settings come from the environment (TERRAMESH_*, see terramesh_stac.settings), read here
once, as `terramesh-stac serve` does.
"""

from starlette.applications import Starlette

from terramesh_stac.catalog import app
from terramesh_stac.settings import get_settings


def create_app() -> Starlette:
    return app.create_app(get_settings())
