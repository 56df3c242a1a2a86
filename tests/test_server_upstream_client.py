"""An unmodified upstream DreamLake 0.3 client against our server.

Needs a Python with upstream ``dreamlake>=0.3,<0.4`` installed (it cannot share
our venv: same package name). Point ``DREAMLAKE_UPSTREAM_PYTHON`` at it, e.g.::

    python3 -m venv /tmp/upstream && /tmp/upstream/bin/pip install 'dreamlake>=0.3,<0.4'
    DREAMLAKE_UPSTREAM_PYTHON=/tmp/upstream/bin/python pytest tests/test_server_upstream_client.py

Skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from server_process import ServerProcess, make_key

UPSTREAM = os.environ.get("DREAMLAKE_UPSTREAM_PYTHON")

SCRIPT = r'''
import json, os, sys
from dreamlake import Session
out = {}
upload = os.path.join(os.environ["WORK"], "weights.bin")
with open(upload, "wb") as f:
    f.write(bytes(range(256)) * 64)
with Session(prefix="lab/upstream", url=os.environ["URL"], root=None, tags=["x"]) as s:
    s.log("hello", level="info", epoch=1)
    s.params.set(lr=0.001, model={"layers": 3})
    out["params"] = s.params.get()
    t = s.track("robot/pose")
    t.append(_ts=1.0, x=0.1)
    t.append(_ts=1.0, y=0.2)
    t.append(_ts=2.0, x=0.3, y=0.4)
    out["batch"] = t.append_batch([{"_ts": 3.0 + i, "x": float(i)} for i in range(5)])
    t.flush()
    out["read"] = t.read(start_index=0, limit=100)
    out["stats"] = t.stats()
    out["tracks"] = t.list_all()
    entry = s.files.upload(upload, path="/models", description="w", tags=["best"], metadata={"k": 1})
    out["upload"] = entry
    out["listed"] = s.files.list(path="/models")
    dest = os.path.join(os.environ["WORK"], "back.bin")
    out["download"] = s.file(file_id=entry["id"], dest_path=dest).download()
    out["same_bytes"] = open(dest, "rb").read() == open(upload, "rb").read()
    out["updated"] = s.file(file_id=entry["id"], description="v2").update()
    out["deleted"] = s.file(file_id=entry["id"]).delete()
print("RESULT " + json.dumps(out, default=str))
'''


@pytest.mark.skipif(not UPSTREAM, reason="set DREAMLAKE_UPSTREAM_PYTHON to a Python with upstream dreamlake 0.3")
def test_upstream_client_round_trip(tmp_path):
    root = tmp_path / "store"
    key = make_key(root, "ada", ("lab",))
    with ServerProcess(root) as srv:
        env = {**os.environ, "DREAMLAKE_API_KEY": key, "URL": srv.url, "WORK": str(tmp_path)}
        env.pop("PYTHONPATH", None)
        run = subprocess.run([UPSTREAM, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))
        out = json.loads(line[len("RESULT "):])
        assert out["params"] == {"lr": 0.001, "model.layers": 3}
        # upstream buffers append() until flush(); append_batch() is sent at once
        assert (out["batch"]["startIndex"], out["batch"]["count"]) == (0, 5)
        rows = out["read"]["data"]
        assert [r["data"] for r in rows[5:]] == [{"_ts": 1.0, "x": 0.1, "y": 0.2}, {"_ts": 2.0, "x": 0.3, "y": 0.4}]
        assert out["read"]["total"] == 7 and out["stats"]["totalDataPoints"] == 7
        assert [t["name"] for t in out["tracks"]] == ["robot/pose"]
        assert out["upload"]["filename"] == "weights.bin" and out["same_bytes"] is True
        assert [f["id"] for f in out["listed"]] == [out["upload"]["id"]]
        assert out["updated"]["description"] == "v2" and out["deleted"]["id"] == out["upload"]["id"]
        with srv.client(key) as c:  # the server's own view of what upstream wrote
            sid = c.post("/workspaces/lab/sessions", json={"name": "upstream"}).json()["session"]["id"]
            logs = c.get(f"/sessions/{sid}/logs").json()["data"]
            assert logs[0]["data"]["message"] == "hello" and logs[0]["data"]["metadata"] == {"epoch": 1}
