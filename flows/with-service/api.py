"""A tiny API for flows/with-service.toml: items in memory, writes need the bearer token."""
import http.server
import json
import os
import signal
import sys

TOKEN = os.environ["API_TOKEN"]
ITEMS = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self):
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if self.path == "/items":
            return self.reply(200, ITEMS)
        self.reply(404, {"error": "no such path"})

    def do_PUT(self):
        if not self.authorised():
            return self.reply(401, {"error": "bad token"})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        ITEMS.update(body)
        self.reply(200, {"stored": len(body)})

    def log_message(self, fmt, *args):
        print(f"{self.command} {self.path}", flush=True)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"api listening on 127.0.0.1:{os.environ['PORT']}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
