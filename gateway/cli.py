"""``opengateway``: serve, check-config, plugins, keys."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys

from gateway import __version__
from gateway.config import Config, ConfigError, config_from_env, load_config, with_lines

log = logging.getLogger("opengateway")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load(path: str | None) -> tuple[Config, bool]:
    """The config and whether its keys were configured (not generated for this run)."""
    if path:
        return load_config(path), True
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
    return env.config, env.generated_key is None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import install_uvloop, serve

    try:
        config, keys_configured = _load(args.config or os.environ.get("OPENGATEWAY_CONFIG"))
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not _is_loopback(host) and not (keys_configured and config.keys):
        print(f"refusing to listen on {host}: a non-loopback address needs gateway keys in the config "
              "or OPENGATEWAY_API_KEY; or bind 127.0.0.1", file=sys.stderr)
        return 2
    install_uvloop()
    try:
        asyncio.run(serve(config, host, port))
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    return 0


def _print_problems(exc: ConfigError) -> None:
    print(f"configuration problems ({len(exc.problems)}):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    import aiohttp

    from gateway.registry import Registry

    try:
        config = load_config(args.file)

        async def build() -> None:
            async with aiohttp.ClientSession() as session:
                await Registry.build(config, session).close()
        asyncio.run(build())
    except ConfigError as exc:
        try:
            with open(args.file, encoding="utf-8") as f:
                problems = with_lines(exc.problems, f.read())
        except OSError:
            problems = exc.problems
        for problem in problems:
            print(f"{args.file}:{problem}", file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.keys)} keys)")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from gateway.plugins import discover

    plugins = discover()
    width = max([len(n) for n in plugins] + [4])
    for name, info in sorted(plugins.items()):
        state = "ok" if info.cls is not None else f"FAILED: {info.error}"
        print(f"{name:<{width}}  {info.distribution} {info.version}  {info.module}  {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opengateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"opengateway {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("OPENGATEWAY_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: $OPENGATEWAY_CONFIG, else the environment)")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port, 8080)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file and report every problem")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    plugins = sub.add_parser("plugins", help="list the installed provider plugins")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
