"""`loraroute config check|push|get`: validate a config; push it as the live config; read it back.

`check FILE` prints OK or every problem found. `push FILE` runs the same checks, then stores the
file as the next revision of the live config, which every running service picks up between
requests (`services.common.live_config`). `get` prints the stored revision.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import nats.errors
import yaml

from loraroute import natsauth
from schemas.config import Config, ConfigError, ConfigIssue, Nats, load_config
from services.classifier.errors import ModelDirError
from services.classifier.model_dir import load_model_dir
from services.common.log import configure
from services.common.settings import Settings

__all__ = ["main"]


def _check(path: Path) -> int:
    return 0 if _validated(path) is not None else 1


def _validated(path: Path) -> Config | None:
    """The config at `path` after every check of `config check` (warnings printed), or None
    after printing its errors."""
    try:
        config, warnings = load_config(path)
        model = config.classifier.category_model
        model_dir = Path(model.model_id)
        if not model_dir.is_dir():
            warnings.append(
                ConfigIssue(
                    "classifier.category_model.model_id",
                    f"model directory {str(model_dir)!r} not found (build it with "
                    "`loraroute model build`); category reachability not checked",
                )
            )
        else:
            # The classifier's own start-up reading: a broken directory fails here as it would
            # there, and every category must be reachable from the model's labels.
            labels = load_model_dir(
                model_dir,
                onnx_file=config.inference.onnx_file,
                category_mapping_path=model.category_mapping_path,
            ).labels
            _, warnings = load_config(path, labels=labels)
    except OSError as error:
        print(f"{path}: cannot read: {error.strerror or error}", file=sys.stderr)
        return None
    except ConfigError as error:
        print(f"{path}: {len(error.issues)} error(s)", file=sys.stderr)
        for issue in error.issues:
            print(f"  {issue}", file=sys.stderr)
        return None
    except ModelDirError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return None
    for issue in warnings:
        print(f"  warning: {issue}", file=sys.stderr)
    print(f"{path}: OK")
    return config


def _push(path: Path, nats_url: str, settings: Settings) -> int:
    from loraroute.config_push import push_text

    config = _validated(path)
    if config is None:
        print(f"{path}: not pushed; the running config stays", file=sys.stderr)
        return 1
    text = path.read_text(encoding="utf-8")
    try:
        pushed = asyncio.run(push_text(nats_url, text, config, settings.nats_options()))
    except (OSError, TimeoutError, nats.errors.Error) as error:
        print(f"loraroute config push: cannot store it at {nats_url}: {error!r}", file=sys.stderr)
        return 1
    if pushed.unchanged:
        print(
            f"{path}: unchanged, the live config is already this file (revision {pushed.revision})"
        )
        return 0
    for key in pushed.restart_keys:
        print(
            f"  warning: {key} changed: the services that read it keep the old value until "
            "they restart (see docs/config.md, live config)",
            file=sys.stderr,
        )
    print(f"{path}: pushed as revision {pushed.revision}")
    return 0


def _get(prefix: str, revision: int | None, nats_url: str, settings: Settings) -> int:
    from loraroute.config_push import get_text

    try:
        stored = asyncio.run(get_text(nats_url, prefix, settings.nats_options(), revision))
    except (OSError, TimeoutError, nats.errors.Error) as error:
        print(f"loraroute config get: cannot read it at {nats_url}: {error!r}", file=sys.stderr)
        return 1
    if stored is None:
        which = f"revision {revision} of the" if revision is not None else ""
        print(
            f"loraroute config get: no {which} live config stored for prefix {prefix!r}".replace(
                "no  ", "no "
            ),
            file=sys.stderr,
        )
        return 1
    text, number = stored
    print(f"# revision {number}", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def _prefix_of(path: Path) -> str:
    """`nats.subject_prefix` of the config file at `path`, or the default when it cannot say."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        prefix = data["nats"]["subject_prefix"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return Nats().subject_prefix
    return prefix if isinstance(prefix, str) else Nats().subject_prefix


def main(argv: list[str]) -> int:
    # Only the bus's warnings, on stderr: `get` writes the config itself on stdout.
    configure("config", "warning")
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="loraroute config", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate FILE; exit 1 on any error")
    check.add_argument("file", type=Path)
    nats_help = f"NATS URL or cluster nodes (default {settings.nats_url}; env LORAROUTE_NATS_URL)"
    push = sub.add_parser(
        "push", help="validate FILE and make it the live config of every running service"
    )
    push.add_argument("file", type=Path)
    get = sub.add_parser("get", help="print the live config (its revision goes to stderr)")
    credentials_help = (
        "the credentials file `loraroute up` writes (<data-dir>/nats-credentials.json): connect "
        "as its admin user, to its URL unless --nats names one (default: the LORAROUTE_NATS_* "
        "variables)"
    )
    for verb in (push, get):
        verb.add_argument("--nats", help=nats_help)
        verb.add_argument("--credentials", type=Path, metavar="FILE", help=credentials_help)
    get.add_argument(
        "--prefix",
        help="the deployment's nats.subject_prefix (default: the one in --config's file)",
    )
    get.add_argument(
        "--config",
        default=settings.config_path,
        help="where the prefix is read when --prefix is not given (env LORAROUTE_CONFIG)",
    )
    get.add_argument("--revision", type=int, help="an earlier revision still kept")
    args = parser.parse_args(argv)
    if args.action == "check":
        return _check(args.file)
    nats_url = args.nats or settings.nats_url
    if args.credentials is not None:
        try:
            url, users = natsauth.read_credentials(args.credentials)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"loraroute config: {args.credentials}: unreadable ({error})", file=sys.stderr)
            return 2
        nats_url = args.nats or url
        settings = Settings.from_env({**os.environ, **natsauth.env(users.get("admin"))})
    if args.action == "push":
        return _push(args.file, nats_url, settings)
    prefix = args.prefix or _prefix_of(Path(args.config))
    return _get(prefix, args.revision, nats_url, settings)
