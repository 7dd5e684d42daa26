"""``opengateway``: serve, check-config, models, plugins, keys."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from datetime import date
from typing import TYPE_CHECKING, Mapping

from gateway import LOG_FORMAT, __version__
from gateway.listeners import Listeners
from gateway.config import Config, ConfigError, Problem
from gateway.config_load import config_from_env, inspect_config, load_config, related, with_lines

if TYPE_CHECKING:
    from gateway.model_lifecycle import ShutdownNotice

log = logging.getLogger("opengateway")

#: What ``opengateway --help`` says first (the module docstring is for readers of the code).
DESCRIPTION = ("OpenGateway: a self-hosted, OpenAI-compatible gateway for image generation. "
               "Run `opengateway COMMAND --help` for a command's options.")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load(path: str | None) -> tuple[Config, bool, str | None]:
    """The config, whether its keys were configured (not generated for this run), and the
    generated key if there is one (workers must all accept the same key)."""
    if path:
        return load_config(path), True, None
    env = config_from_env()
    if env.upstream == "openai":
        base = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        log.info("no config file: openai/* goes to OpenAI at %s (OPENAI_API_KEY is set)", base)
    else:
        log.info("no config file and no OPENAI_API_KEY: openai/* is served by the embedded local "
                 "provider (offline demo images)")
    if env.generated_key:
        # Printed once, on stdout, so that it can be copied; it is never logged or stored.
        print(f"OpenGateway API key for this run (set OPENGATEWAY_API_KEY to choose one): "
              f"{env.generated_key}", flush=True)
    return env.config, env.generated_key is None, env.generated_key


def _serve_worker(args: argparse.Namespace, path: str | None) -> int:
    """A worker started by the supervisor: the sockets are inherited, and the config is the text
    the supervisor hands over its control channel (gateway/control.py)."""
    import socket

    from gateway.config_load import parse_config
    from gateway.control import read_first
    from gateway.listeners import Listeners
    from gateway.server import WorkerStart, install_uvloop, serve
    from gateway.supervisor import stop_with_supervisor

    control = socket.socket(fileno=args.control_fd)
    start = read_first(control)
    try:
        config = parse_config(start.text, source=path or "config") if start.text is not None else config_from_env().config
    except ConfigError as exc:
        print_problems(exc)
        return 2
    admin = socket.socket(fileno=args.admin_fd) if args.admin_fd is not None else None
    listeners = Listeners(socket.socket(fileno=args.listen_fd), admin)
    install_uvloop()
    stop_with_supervisor()
    try:
        asyncio.run(serve(config, listeners, config_path=path,
                          worker=WorkerStart(control, start.generation, start.session_secret)))
    except ConfigError as exc:  # a plugin refused its settings: the supervisor stops on code 2
        print_problems(exc)
        return 2
    return 0


#: Set for every serving process (before aiohttp is imported), unless the environment sets it:
#: frozenlist's compiled module (aiohttp's lists of middlewares and signal receivers, read once
#: per request at most) is C++, and loading libstdc++ costs a process about 1 MB of RSS.
PURE_PYTHON_ENV = {"FROZENLIST_NO_EXTENSIONS": "1"}


def raise_open_files_limit() -> tuple[int, int]:
    """The soft RLIMIT_NOFILE up to the hard one (workers inherit it): every request in flight
    holds two descriptors, its client's and its upstream's, and soft limits are often 1,024.
    Returns (soft before, soft now); the hard limit itself is the operator's (ulimit -Hn,
    systemd LimitNOFILE=, docker --ulimit nofile=)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def _no_system_mime_types() -> None:
    """Before aiohttp is imported: its FileResponse builds a table of MIME types at import, from
    the system's mime.types files when there are any (about 0.45 MB of every process). The
    gateway serves no files; Python's own table (image/png, image/jpeg, image/webp, ...) is all
    that a guess could need here."""
    import mimetypes

    if not mimetypes.inited:
        mimetypes.knownfiles = []


def cmd_serve(args: argparse.Namespace) -> int:
    _no_system_mime_types()
    from gateway.listeners import CannotListen, bind_listeners

    for name, value in PURE_PYTHON_ENV.items():
        os.environ.setdefault(name, value)
    path = args.config or os.environ.get("OPENGATEWAY_CONFIG")
    if args.listen_fd is not None:
        return _serve_worker(args, path)
    before, now = raise_open_files_limit()
    if now != before:
        log.info("open files limit (RLIMIT_NOFILE) raised from %d to the hard limit, %d: about %d requests "
                 "in flight per process", before, now, now // 2)
    else:
        log.info("open files limit (RLIMIT_NOFILE): %d, about %d requests in flight per process", now, now // 2)
    _check_plugins()
    try:
        config, keys_configured, generated_key = _load(path)
    except ConfigError as exc:
        print_problems(exc)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers if args.workers is not None else config.server.workers
    if not _is_loopback(host) and not (keys_configured and config.keys):
        print(f"refusing to listen on {host}: a non-loopback address needs gateway keys in the config "
              "or OPENGATEWAY_API_KEY; or bind 127.0.0.1", file=sys.stderr)
        return 2
    try:
        listeners = bind_listeners(config, host, port)
    except ConfigError as exc:
        print_problems(exc)
        return 2
    except CannotListen as exc:
        print(exc.strerror, file=sys.stderr)
        return 2
    loop = _loops_back(config, listeners)
    if loop is not None:
        listeners.close()
        provider_id, url = loop
        source = "OPENAI_BASE_URL" if not path else "its settings"
        print(f"refusing to start: provider '{provider_id}' would send requests to {url} ({source}), which "
              "is this gateway's own address, so every request would come back to it.", file=sys.stderr)
        if not path:
            print("OPENAI_BASE_URL in this shell is probably meant for SDK clients (to aim them at the gateway); "
                  "unset it for `opengateway serve`, or set it to the upstream's URL.", file=sys.stderr)
        return 2
    if workers > 1:
        from gateway.supervisor import Spec, exec_supervisor

        env = dict(os.environ)
        if generated_key:  # every worker must accept the key printed above
            env["OPENGATEWAY_API_KEY"] = generated_key
        admin_fd = listeners.admin.fileno() if listeners.admin is not None else None
        # The supervisor is a lean program of its own (gateway/supervisor.py): this process, which
        # has loaded the whole config machinery to check the file, becomes it (same pid).
        exec_supervisor(Spec(workers, listeners.public.fileno(), admin_fd, config.server.drain_timeout_s,
                             args.log_level, path), env)
    from gateway.server import install_uvloop, serve

    install_uvloop()
    try:
        asyncio.run(serve(config, listeners, config_path=path))
    except ConfigError as exc:
        print_problems(exc)
        return 2
    finally:
        listeners.close()
    return 0


def _loops_back(config: Config, listeners: Listeners) -> tuple[str, str] | None:
    """The first provider instance with a URL setting that is the gateway's own listening
    address (the id and the URL), or None. Literal addresses and this machine's names only:
    nothing is resolved."""
    import socket

    from yarl import URL

    bound_host, bound_port = listeners.public.getsockname()[:2]
    try:
        bound = ipaddress.ip_address(bound_host)
    except ValueError:
        return None
    own_names = {"localhost", socket.gethostname().lower()}
    for instance in config.providers:
        for value in instance.settings.values():
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                continue
            try:
                url = URL(value)
            except ValueError:
                continue
            if url.port != bound_port or url.host is None:
                continue
            try:
                address = ipaddress.ip_address(url.host)
            except ValueError:
                address = None
            if address == bound or (address is None and url.host.lower() in own_names and (
                    bound.is_loopback or bound.is_unspecified)) or (
                    bound.is_unspecified and address is not None and address.is_loopback):
                return instance.id, value
    return None


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def print_problems(exc: ConfigError) -> None:
    print(f"configuration problems ({len(exc.problems)}):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def config_problems(text: str, env: Mapping[str, str] | None = None, today: date | None = None
                    ) -> tuple[Config | None, list[Problem], list[ShutdownNotice]]:
    """Every problem of a config file in one run, each with its line: the file's own (an unset
    ``${VAR}`` included), then the plugins' and the model table's, found by building the runtime
    ``serve`` would build on what could be made of the file; and its configured models past, or
    within 30 days of, their shutdown on ``today`` (default: the process's today)."""
    import msgspec

    from gateway.catalog_report import offline_registry
    from gateway.model_lifecycle import default_today, notices

    inspection = inspect_config(text, env)
    config, problems = inspection.config, list(inspection.problems)
    if config is None:
        return None, problems, []
    # When the model table names what does not exist, the plugins are still checked, on their own.
    own = [p for p in problems if not related(p.path, inspection.unset_paths)]
    checked = msgspec.structs.replace(config, models={}, aliases={}) if own else config
    day = today or default_today()
    found: list[ShutdownNotice] = []
    try:
        found = offline_registry(checked, day, lambda registry: notices(registry, day))
    except ConfigError as exc:
        later = [p for p in exc.problems if not related(p.path, inspection.unset_paths)]
        problems += with_lines(later, text)
    return (config if not problems else None), sorted(problems, key=lambda p: p.line or 0), found


def _check_plugins() -> None:
    """Import every installed provider plugin once and log those that cannot be used (a worker
    later imports only the plugins its configuration names: gateway/plugins.py)."""
    from gateway.plugins import discover

    discover()


def cmd_check_config(args: argparse.Namespace) -> int:
    _check_plugins()
    path = args.file or os.environ.get("OPENGATEWAY_CONFIG")
    if not path:
        print("check-config: no file given and OPENGATEWAY_CONFIG is not set; `opengateway serve` would "
              "configure itself from the environment (OPENGATEWAY_API_KEY, OPENAI_API_KEY), which has no "
              "file to check. Usage: opengateway check-config FILE", file=sys.stderr)
        return 2
    if not args.file:
        print(f"checking {path} (from OPENGATEWAY_CONFIG)", file=sys.stderr)
    try:
        text = _read_text(path)
    except OSError as exc:
        print(f"{path}: cannot read the file: {exc.strerror}", file=sys.stderr)
        return 1
    config, problems, found = config_problems(text)
    if config is None:
        for problem in problems:
            print(f"{path}:{problem}", file=sys.stderr)
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    lines = with_lines([Problem(f"$.models.{n.model}", "") for n in found], text)
    for notice, located in zip(found, lines):
        where = f"line {located.line}: " if located.line else ""
        print(f"{path}: warning: {where}{notice}", file=sys.stderr)
    print(f"{path}: OK ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.keys)} keys)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from gateway.catalog_report import command

    return command(args.config or os.environ.get("OPENGATEWAY_CONFIG"), as_json=args.json, check=args.check,
                   day=args.today)


def cmd_plugins(args: argparse.Namespace) -> int:
    from gateway.plugins import discover

    import msgspec

    plugins = sorted(discover().values(), key=lambda i: i.name)
    if args.json:
        rows = [{"name": i.name, "distribution": i.distribution, "version": i.version, "module": i.module,
                 "api_version": i.api_version, "ok": i.ok, "error": i.error, "fix": i.fix} for i in plugins]
        print(msgspec.json.encode(rows).decode())
        return 0
    table = [("NAME", "DISTRIBUTION VERSION", "MODULE", "STATUS")]
    table += [(i.name, f"{i.distribution} {i.version}", i.module,
               "ok" if i.ok else f"FAILED: {i.error} ({i.fix})") for i in plugins]
    widths = [max(len(row[c]) for row in table) for c in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    # A broken plugin is reported, not fatal: the gateway runs without it unless the config uses it.
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """The key is printed once and never stored: the config holds only its SHA-256 hash."""
    import json
    import secrets
    from datetime import datetime

    from gateway.config import key_hash

    if args.expires_at is not None:
        try:
            expires = datetime.fromisoformat(args.expires_at)
        except ValueError:
            expires = None
        if expires is None or expires.tzinfo is None:
            print(f"--expires-at: expected RFC 3339 with a time zone, e.g. 2026-12-31T23:59:59Z; "
                  f"got {args.expires_at!r}", file=sys.stderr)
            return 2
    key = "og-" + secrets.token_urlsafe(32)
    entry = [f"  - name: {json.dumps(args.name)}", f'    hash: "{key_hash(key)}"']
    if args.models:
        entry.append(f"    models: {json.dumps(args.models)}")
    if args.expires_at is not None:
        entry.append(f"    expires_at: {json.dumps(args.expires_at)}")
    print(f"API key for '{args.name}' (shown once; it is not stored anywhere):\n\n{key}\n")
    print("Add this entry under `keys:` in the config, then reload (SIGHUP or POST /admin/reload):\n")
    print("\n".join(entry))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opengateway", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"opengateway {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        default=os.environ.get("OPENGATEWAY_LOG_LEVEL", "INFO").upper(),
                        help="debug, info, warning, error or critical, in any case (default: "
                             "$OPENGATEWAY_LOG_LEVEL, else info)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: $OPENGATEWAY_CONFIG, else the environment)")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port, 8080)")
    serve.add_argument("--workers", type=int, choices=range(1, 257), metavar="N",
                       help="processes sharing the port, restarted if they crash (default: server.workers, 1)")
    # Internal: how the supervisor hands its listening sockets to a worker.
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--admin-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="the models the config serves: capabilities, prices and each "
                            "provider's lifecycle (deprecation, shutdown, successor)")
    models.add_argument("--config", help="YAML config file (default: $OPENGATEWAY_CONFIG, else the environment)")
    models.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    models.add_argument("--check", action="store_true",
                        help="exit 1 when a model of the config's models: is past its shutdown on a target and "
                             "not pinned (for CI and deploy checks); near shutdowns are warnings")
    models.add_argument("--today", metavar="YYYY-MM-DD",
                        help="judge the lifecycle on this day (default: $OPENGATEWAY_TODAY, else today, UTC)")
    models.set_defaults(func=cmd_models)

    check = sub.add_parser("check-config", help="validate a config file and report every problem")
    check.add_argument("file", nargs="?", help="the YAML config file (default: $OPENGATEWAY_CONFIG)")
    check.set_defaults(func=cmd_check_config)

    plugins = sub.add_parser("plugins", help="list the installed provider plugins (name, distribution, "
                             "version, module) and why any failed to load")
    plugins.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    plugins.set_defaults(func=cmd_plugins)

    keys = sub.add_parser("keys", help="manage gateway keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="make a new random key; prints it once with its config entry")
    create.add_argument("--name", required=True, help="the key's name (metrics, logs, limits)")
    create.add_argument("--models", nargs="+", metavar="GLOB", help="model ids it may use, e.g. 'openai/*'")
    create.add_argument("--expires-at", metavar="RFC3339", help="e.g. 2026-12-31T23:59:59Z")
    create.set_defaults(func=cmd_keys_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gateway.model_lifecycle import TODAY_ENV, parse_day

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # argparse does not check a default against the choices
        parser.error(f"OPENGATEWAY_LOG_LEVEL: invalid choice: {args.log_level.lower()!r} "
                     f"(choose from {', '.join(level.lower() for level in LOG_LEVELS)})")
    if os.environ.get(TODAY_ENV):
        try:
            parse_day(os.environ[TODAY_ENV])
        except ValueError:
            parser.error(f"{TODAY_ENV}: expected YYYY-MM-DD, got {os.environ[TODAY_ENV]!r}")
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
