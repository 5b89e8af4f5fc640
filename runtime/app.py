"""`outpost run`: the composition root and the root nursery of a live runtime.

`Runtime` builds every part and wires each to the ports of the others (the
one `Methods` table gets the core handlers and the maintenance tasks; the
control server serves that table); this is the only module that knows them all.

Open order (and the reverse close order): store (takes the data-dir lock
first, so a second runtime touches nothing of the first) -> shared-memory
segment -> rollouts (an interrupted one finished, every agent placed on its
current release) -> supervisor with the agents -> control socket. SIGTERM/SIGINT or a
`shutdown` request stops agents in reverse start order, checkpoints and flushes
the store, removes the socket and the segment.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from typing import Any

import trio

from runtime import __version__
from runtime.agents import AgentContext, state_stream
from runtime.agents.directory import AgentDirectory
from runtime.agents.mailbox import Mailboxes
from runtime.config import AgentSpec, Config
from runtime.control.dispatch import Caller, Methods
from runtime.control.ledger import RequestLedger
from runtime.control.mutations import Mutations
from runtime.control.server import ControlServer
from runtime.events import EventLog
from runtime.maintain.disk import DiskGuard
from runtime.maintain.online import online_tasks
from runtime.methods import control_methods
from runtime.releases import ReleaseStore, verify
from runtime.rollouts.methods import rollout_methods
from runtime.rollouts.room import Rollouts
from runtime.store import StateBook, Store, StoreOptions, open_store
from runtime.supervisor import RootGaveUp, Supervisor
from runtime.supervisor.methods import supervisor_methods
from runtime.supervisor.template import Template, TemplateClient
from runtime.telemetry import HELP, Telemetry
from shm import Segment
from shm.metrics import heartbeat_age

log = logging.getLogger("outpost")


class Runtime:
    """The live parts of one runtime, wired together (and the `Host` the methods see)."""

    def __init__(self, config: Config, store: Store, segment: Segment, book: StateBook,
                 template: Template | None = None, requests: RequestLedger | None = None) -> None:
        self.config = config
        self.store = store
        self.segment = segment
        self.book = book
        self.events = EventLog(store)
        self.started = time.monotonic()
        self.shutdown_requested = trio.Event()
        self._heartbeat_words: dict[str, Any] = {}  # agent -> its heartbeat slot
        self.disk_guard = DiskGuard(config, self.events, config.maintain.disk_check_interval_s)
        # Supervision: process/exec agents are forked by the template (started before trio).
        self.template = None if template is None else TemplateClient(template)
        self.gave_up: str | None = None
        self.agents = AgentDirectory()  # the supervisor keeps it current; mailboxes read it
        self.mailboxes = Mailboxes(store, book, self.agents, on_send=self._count_send)
        self.supervisor = Supervisor(
            config.agents, self.make_context, self.heartbeat_age, self.events.emit,
            groups=config.groups, root=config.supervisor, template=self.template,
            segment=segment, book=book, mailboxes=self.mailboxes, directory=self.agents,
            log_dir=config.maintain.logs_dir,
            data_dir=config.data_dir, log_level=config.log_level,
            on_root_give_up=self._root_gave_up, verify_release=verify)
        # Mutating methods: request ids applied once, one mutation per agent, audited.
        self.mutations = Mutations(requests, self.events.emit, self.supervisor.scope_of)
        self.methods = Methods(self.mutations)
        self.methods.add(control_methods(
            host=self, supervisor=self.supervisor, book=book, flush=store.flush,
            mailboxes=self.mailboxes, events=self.events, segment=segment,
            maintenance=online_tasks(config, store, book, self.events, self.disk_guard,
                                     requests=requests)))
        self.methods.add(supervisor_methods(self.supervisor))
        self.rollouts = Rollouts(
            methods=self.methods, events=self.events, book=book, segment=segment,
            directory=self.agents, locks=self.mutations.locks,
            scope_of=self.supervisor.scope_of,
            releases=ReleaseStore(config.data_dir / "releases"),
            marks_dir=config.data_dir / "rollouts", archive_dir=config.maintain.archive_dir,
            settings=lambda: self.config.rollouts)
        self.methods.add(rollout_methods(self.rollouts))
        self.control = ControlServer(config.socket_path, self.methods,
                                     config.allowed_uids, config.allowed_gids)

    @property
    def stopping(self) -> bool:
        return self.shutdown_requested.is_set()

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    def use_config(self, config: Config) -> None:
        """Take a reloaded config as the one in force ([control] applies at once)."""
        self.config = config
        self.control.set_allowed(config.allowed_uids, config.allowed_gids)

    def _root_gave_up(self, reason: str) -> None:
        self.gave_up = reason
        self.shutdown_requested.set()

    def _count_send(self, sender: str | None, to: str) -> None:
        if sender is not None and self.supervisor.find(sender) is not None:
            self.supervisor.counter(f"{sender}:messages_out").inc()

    async def make_context(self, spec: AgentSpec) -> AgentContext:
        state = await self.book.open(state_stream(spec.name))
        return AgentContext(spec.name, state, self.segment, self.mailboxes)

    def heartbeat_age(self, agent: str) -> float | None:
        # Slots are never freed while a segment lives, so a found slot's pointer can be
        # kept: status then costs no directory scan per agent.
        words = self._heartbeat_words.get(agent)
        if words is None:
            found = self.segment.find(f"{agent}:heartbeat")
            if found is None:
                return None
            words = self._heartbeat_words[agent] = self.segment.slot_words(found[0])
        age = heartbeat_age(words)
        return None if age is None else round(age, 3)

    def info(self) -> dict:
        """Version, pid, uptime, paths, how many agents, the control socket's counters."""
        control = self.control
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "config": str(self.config.path),
            "data_dir": str(self.config.data_dir),
            "run_dir": str(self.config.run_dir),
            "agents": len(self.supervisor.children),
            "control": {"socket": str(control.path), "connections": control.active,
                        "refused": control.refused, "requests": control.requests,
                        "accept_failures": control.accept_failures},
        }


async def run_runtime(config: Config, template: Template | None = None, *,
                      task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED) -> None:
    """Run until a signal or a shutdown request; raises on a start-up failure.

    `template` is the agent template process, forked before trio started
    (runtime.supervisor.template). RootGaveUp after a clean stop if the root
    supervisor gave up. Started (`nursery.start`) once the control socket
    answers, with the Runtime.
    """
    async with open_store(config.data_dir, StoreOptions.of(config.store)) as store:
        config.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.run_dir, 0o700)
        segment = Segment.create(config.segment_path, config.shm_slots)
        try:
            s = config.store
            book = StateBook(store, s.checkpoint_every_ops, s.checkpoint_every_s,
                             s.checkpoint_keep_tail)
            requests = await RequestLedger.load(store)
            rt = Runtime(config, store, segment, book, template, requests)
            await _serve(rt, task_status)
        finally:
            segment.unlink()
            segment.close()
    if rt.gave_up is not None:
        raise RootGaveUp(rt.gave_up)
    log.info("outpost stopped cleanly")


async def _serve(rt: Runtime, task_status: trio.TaskStatus[Runtime]) -> None:
    config = rt.config
    http = None
    if config.http.enabled:  # built before anything starts: a bad token file refuses
        from runtime.http.serve import HttpFace  # hypercorn is loaded only when it serves
        http = HttpFace(config.http, functools.partial(rt.methods.call, caller=Caller("http")),
                        rt.segment, metrics_help=HELP)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(_on_signal, signals, rt.shutdown_requested)
            nursery.start_soon(rt.book.run)
            nursery.start_soon(rt.events.run)
            nursery.start_soon(rt.disk_guard.run)
            rt.events.emit("runtime-start", None, pid=os.getpid(), version=__version__)
            await nursery.start(rt.rollouts.run)
            # Before any agent starts: an interrupted rollout is finished or rolled back,
            # every agent is set to run its current release.
            await rt.rollouts.prepare()
            if rt.template is not None:
                await nursery.start(rt.template.run)
            await nursery.start(rt.supervisor.run)
            await nursery.start(rt.control.serve)
            await nursery.start(Telemetry(rt.segment, rt.store, rt.events, rt.disk_guard,
                                          rt.methods.call).run)
            if http is not None:
                await nursery.start(http.run)
            log.info("outpost %s running: %d agent(s), control socket %s", __version__,
                     len(config.agents), config.socket_path)
            task_status.started(rt)
            await rt.shutdown_requested.wait()
            log.info("shutting down: stopping agents in reverse start order")
            rt.events.emit("runtime-stop", None, pid=os.getpid())
            rt.rollouts.stop()  # an active rollout stays in its phase: the next start ends it
            with trio.CancelScope(shield=True), \
                    trio.move_on_after(config.shutdown_timeout_s) as waited:
                await rt.supervisor.stop()
                await rt.book.checkpoint_all()
                await rt.store.flush()
            if waited.cancelled_caught:
                log.error("shutdown took longer than %.1fs; cancelling what is left",
                          config.shutdown_timeout_s)
            nursery.cancel_scope.cancel()


async def _on_signal(signals: trio.abc.ReceiveChannel, shutdown: trio.Event) -> None:
    async for signum in signals:
        log.info("received %s", signal.Signals(signum).name)
        shutdown.set()

