"""Talks to flows/with-service/api.py: `put FILE` stores `name count` lines, `total` prints the sum."""
import json
import os
import sys
import urllib.request

BASE = "http://127.0.0.1:18765"


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {os.environ['API_TOKEN']}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


if sys.argv[1] == "put":
    with open(sys.argv[2]) as f:
        items = {name: int(count) for name, count in (line.split() for line in f if line.strip())}
    print(call("PUT", "/items", items))
elif sys.argv[1] == "total":
    print(sum(call("GET", "/items").values()))
