"""Run the update server: one SQLite file and a directory of images under
--data-dir, nothing else to set up.

Devices query it over HTTP (and, with --mqtt, over Alibaba IoT's OTA topics
on that broker); admins publish with `otaflash publish`. The admin token is
--admin-token, else OTAFLASH_ADMIN_TOKEN, else the one kept in
DATA_DIR/admin-token (made on first start). The API is described at /docs
(OpenAPI at /openapi.json).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from otaflash.cli.output import Output

NAME = "serve"
HELP = "run the update server (embedded SQLite, optional MQTT bridge)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("otaflash-data"),
        metavar="DIR",
        help="database and images (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument(
        "--database",
        metavar="URL",
        help="SQLAlchemy URL instead of the SQLite file, e.g. postgresql+psycopg://...",
    )
    parser.add_argument(
        "--admin-token", default=os.environ.get("OTAFLASH_ADMIN_TOKEN"), help=argparse.SUPPRESS
    )
    parser.add_argument("--mqtt", metavar="URL", help="bridge to this MQTT broker (mqtt://H:P)")
    parser.add_argument(
        "--mqtt-sign-method",
        choices=("md5", "sha256"),
        default="md5",
        help="signMethod of MQTT offers (default: md5, which every Alibaba SDK knows)",
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="base URL devices download from (default: http://HOST:PORT)",
    )
    parser.add_argument(
        "--max-upload",
        type=int,
        default=1 << 30,
        metavar="BYTES",
        help="largest file accepted (default: 1 GiB)",
    )
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.server.run import ServerConfig, load_admin_token, serve

    config = ServerConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        database=args.database,
        admin_token=args.admin_token,
        mqtt=args.mqtt,
        mqtt_sign_method=args.mqtt_sign_method,
        public_url=args.public_url,
        max_upload=args.max_upload,
        log_level=args.log_level,
    )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    token_source = "given" if config.admin_token else f"in {args.data_dir / 'admin-token'}"
    load_admin_token(config)
    out.message(
        f"otaflash: serving http://{args.host}:{args.port} (data in {args.data_dir}, "
        f"admin token {token_source}" + (f", MQTT {args.mqtt}" if args.mqtt else "") + ")"
    )
    serve(config)
    return 0
