"""A flame graph committed to docs/ carries no path of the machine that drew it: py-spy titles
the graph with its own command line (its executable, the output file, a process id)."""

from __future__ import annotations

from bench.flame import titled

SVG = (
    '<svg><text id="title" fill="rgb(0,0,0)" x="50.0000%" y="24.00">'
    "/home/ada/project/.venv/bin/py-spy record --pid 4242 --output /tmp/x/flame-web.svg"
    "</text><g><title>handle (gevent/pywsgi.py:1) (3 samples)</title></g>"
    '<text id="details"> </text></svg>'
)


def test_the_title_says_what_the_graph_shows_and_nothing_of_the_machine():
    out = titled(SVG, "web")
    assert "/home/ada" not in out and "/tmp/x" not in out and "4242" not in out
    assert ">py-spy record --gil --rate " in out and "the web process under queued load<" in out
    # the frames and the other texts are left as they were
    assert "<g><title>handle (gevent/pywsgi.py:1) (3 samples)</title></g>" in out
    assert '<text id="details"> </text>' in out
