"""The embedded update server: rules, device API, Alibaba-compatible MQTT bridge.

Start it with ``otaflash serve`` or, from Python, :class:`EmbeddedServer`
(a thread) or :class:`ServerProcess` (a subprocess). Needs the ``server``
extra (FastAPI, uvicorn, SQLAlchemy).
"""

from otaflash.server.run import EmbeddedServer, ServerConfig, ServerProcess, free_port, serve

__all__ = ["EmbeddedServer", "ServerConfig", "ServerProcess", "free_port", "serve"]
