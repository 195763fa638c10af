"""`surg3d ui`: serve the operator's web page (surg3d_nodes/ui/) that talks to the Foxglove bridge.

The page is static HTML + plain JavaScript (no build step, no dependencies); it connects from the browser to
the bridge's WebSocket (subprotocol foxglove.sdk.v1). This server only hands out the files and a
config.json naming the bridge URL. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

UI_DIR = Path(__file__).resolve().parents[1] / "viewer" / "web"


class UiHandler(SimpleHTTPRequestHandler):
    """Static files of UI_DIR plus /config.json (GET/HEAD only); logs failed requests only."""

    bridge_url = "ws://127.0.0.1:8765"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/config.json":
            body = json.dumps({"ws": self.bridge_url}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(getattr(code, "value", code)).startswith(("4", "5")):  # only failures reach the terminal
            super().log_request(code, size)


def make_server(host: str, port: int, bridge_url: str) -> ThreadingHTTPServer:
    """An HTTP server for the UI (port 0 = any free port; see `.server_address`)."""
    if not (UI_DIR / "index.html").is_file():
        raise FileNotFoundError(f"UI files missing: {UI_DIR / 'index.html'} (broken install?)")
    handler = type("BoundUiHandler", (UiHandler,), {"bridge_url": bridge_url})
    return ThreadingHTTPServer((host, port), partial(handler, directory=str(UI_DIR)))


def main(argv: list[str] | None = None) -> int:
    """Serve the UI until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="surg3d ui", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080, 0 = any free port)")
    ap.add_argument("--bridge", default=None,
                    help="bridge WebSocket URL as the browser sees it (default ws://<host>:8765)")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error(f"--port {args.port} is not a TCP port")
    bridge = args.bridge or f"ws://{args.host}:8765"
    if not bridge.startswith(("ws://", "wss://")):
        ap.error(f"--bridge {bridge!r} must be a ws:// or wss:// URL")
    try:
        server = make_server(args.host, args.port, bridge)
    except OSError as e:
        print(f"surg3d ui: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"surg3d ui: open http://{host}:{port}/ (bridge {bridge}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
