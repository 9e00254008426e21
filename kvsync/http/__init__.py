"""HTTP: the Starlette/ASGI app, its schemas, and the uvicorn thread that serves it."""
