"""The startup baseline: a bare FastAPI app with one route, served by uvicorn.

    python bench/bare_app.py <port>

Run by path (not `-m`), so that it starts as a plain script would.
"""

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health/live")
async def live() -> dict[str, str]:
    """The one route: the process is up."""
    return {"status": "live"}


if __name__ == "__main__":
    config = uvicorn.Config(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False
    )
    uvicorn.Server(config).run()
