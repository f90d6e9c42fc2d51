#!/usr/bin/env python3
"""scripts/demo --gateway with AB_DEMO_GATEWAY_PORT on a port that is taken
(ctest demo_gateway_port): the demo uses a free port instead and says so,
as scripts/demo does, and runs to the end (exit 0). The gateway exited at
once on the taken port, and the demo waited 10 s, then ended in a Python
traceback (no JSON from curl), exit 1.

It runs the programs of SOURCE_DIR/build (AB_DEMO_NO_BUILD=1: nothing is
built here); without them the test is skipped (exit 77).

    check_demo_gateway_port.py SOURCE_DIR
"""
import os
import socket
import subprocess
import sys


def main():
    src = sys.argv[1]
    if not os.access(os.path.join(src, "build", "agentbus-gateway"), os.X_OK):
        print("demo_gateway_port: no %s/build/agentbus-gateway: skipped" % src)
        return 77
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = dict(os.environ, AB_DEMO_NO_BUILD="1", AB_DEMO_GATEWAY_PORT=str(port))
    r = subprocess.run(["timeout", "100", "bash", os.path.join(src, "scripts", "demo"),
                        "--gateway"], capture_output=True, text=True, env=env)
    taken.close()
    said = "demo: port %d is taken, using " % port
    ok = r.returncode == 0 and said in r.stdout and "Traceback" not in r.stderr
    print("demo_gateway_port: exit %d, %s" % (r.returncode, "ok" if ok else "FAILED"))
    if not ok:
        print(r.stdout[-2000:])
        print(r.stderr[-2000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
