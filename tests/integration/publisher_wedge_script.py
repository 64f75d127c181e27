"""Run by test_publisher_wedge.py in a gevent-patched process (as the web process is).

A proxy in front of the real broker first black-holes every connection (accepts, never answers);
then the network "comes back": the held connections are reset and new ones are forwarded to the
broker. Prints what the publishes saw, as JSON.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

from app.jobs import EmailJob  # noqa: E402
from app.messaging import PikaPublisher, PublishError  # noqa: E402

broker_host, broker_port, vhost = sys.argv[1], int(sys.argv[2]), sys.argv[3]
state = {"forward": False}


def pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        target.close()


def handle(client: socket.socket, _address: object) -> None:
    if not state["forward"]:
        while not state["forward"]:  # the black hole: accepted, never answered
            gevent.sleep(0.05)
        client.close()  # the network is back: what was held is reset
        return
    upstream = socket.create_connection((broker_host, broker_port))
    gevent.joinall([gevent.spawn(pipe, client, upstream), gevent.spawn(pipe, upstream, client)])


proxy = StreamServer(("127.0.0.1", 0), handle)
proxy.start()
url = f"amqp://guest:guest@127.0.0.1:{proxy.server_port}/{vhost}"
publisher = PikaPublisher(url, retry_delays_ms=(1000,), reconnect_pause=0.2)


def job(n: int) -> EmailJob:
    return EmailJob(notification_id=f"wedge-{n}", to="w@example.com", subject="s", text="t")


def try_publish(n: int, timeout: float) -> str:
    try:
        publisher.publish([job(n)], timeout=timeout)
    except PublishError as exc:
        return type(exc).__name__
    return "confirmed"


while_black_holed = [try_publish(n, 0.3) for n in range(3)]
state["forward"] = True
after = []
for n in range(3, 13):
    after.append(try_publish(n, 2.0))
    if after[-1] == "confirmed":
        break
    gevent.sleep(0.3)
publisher.close()
print(json.dumps({"while_black_holed": while_black_holed, "after": after}))
