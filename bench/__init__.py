"""Benchmarks for runcontrol (`make bench`, `python -m bench`); never part of `make test`.

Every figure is a ratio against a baseline measured in the same run: a bare grpc.aio
echo server (`echo_server`) for the wire, a registry that works the way the original
one did (`manager_scale.SeedStyleRegistry`) for the manager. Servers and the load
generator (`load`) run in separate processes, as do the watcher holders of the
10,000-stream section (`scale`, `watchers`) and the filled servers of `growth`; `run`
drives them and `report` writes the table, JSON, BENCHMARKS.md and the charts.
"""
