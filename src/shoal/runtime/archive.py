"""Signed app archives: one ``.shoal`` file carries an app and its publisher's signature.

An archive is a ZIP file with three kinds of member:

- ``shoal-archive.json``, the manifest: format, app id, name, version, the publisher's
  peer id, and every file of the app with its size and SHA-256;
- ``shoal-archive.sig``, an Ed25519 signature by the publisher over ``SIGNING_CONTEXT``
  followed by the manifest's exact bytes;
- ``app/<path>``, the app's files, exactly those the manifest lists.

Nothing in an archive is trusted before the signature and every file's digest check out.
Unpacking writes into a fresh folder beside the destination and renames it into place
only once the whole archive has verified (and the caller agreed), so a tampered,
truncated or foreign archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.identity import (
    Identity,
    is_identity_file,
    peer_id_from_bytes,
    peer_id_to_bytes,
    verify_signature,
)
from shoal.runtime.config import (
    APP_CODE,
    APP_ID,
    ARCHIVE_SUFFIX,
    CONFIG_NAME,
    RESERVED_APP_IDS,
    VERSION,
    AppConfig,
    ConfigError,
    check_app_code,
    load_config,
    parse_config,
    runs_any_program,
)
from shoal.runtime.pages import INLINE_RECORD, inline_record
from shoal.runtime.statefile import read_record, write_record

FORMAT = 1
SUFFIX = ARCHIVE_SUFFIX
MANIFEST = "shoal-archive.json"
SIGNATURE = "shoal-archive.sig"
PAYLOAD = "app/"
SIGNING_CONTEXT = b"shoal app archive v1\n"
MAX_FILES = 10_000
MAX_FILE_BYTES = 256 << 20
MAX_TOTAL_BYTES = 1 << 30
MAX_MANIFEST_BYTES = 4 << 20
MAX_PATH_BYTES = 1024
SKIPPED_NAMES = {"__pycache__", "node_modules"}
BYTECODE_SUFFIXES = (".pyc", ".pyo")
SKIPPED_SUFFIXES = (*BYTECODE_SUFFIXES, SUFFIX)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
"""Every member's timestamp: the same app makes the same bytes."""
_CHUNK = 1 << 16


class ArchiveError(ShoalError):
    """An archive is damaged, forged, foreign to an installed app, or cannot be made."""

    default_code = "EINVAL"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an archive's publisher signed."""

    app_id: str
    name: str
    version: str
    publisher: str
    """The peer id of the identity that signed the archive."""
    files: dict[str, tuple[int, str]]
    """Path inside the app -> (size in bytes, SHA-256 hex)."""

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.files.values())


@dataclass(frozen=True, slots=True)
class Built:
    path: Path
    manifest: Manifest
    bytes: int
    """The archive's own size."""


# ------------------------------------------------------------------------- building


def app_files(folder: Path) -> list[tuple[str, Path]]:
    """The files of the app in ``folder`` that go into its archive, as (archive path,
    file) sorted by path: everything but hidden files, caches, tests and archives."""
    found: list[tuple[str, Path]] = []
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and d not in SKIPPED_NAMES
                               and d != "tests")
        for name in sorted(names):
            if name.startswith(".") or name.endswith(SKIPPED_SUFFIXES) \
                    or re.fullmatch(r"test_.*\.py|.*\.test\.js", name):
                continue
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not path.is_file():
                raise ArchiveError(f"{path}: not a regular file (archives hold regular "
                                   "files only; copy what it points to instead)")
            if is_identity_file(path):
                raise ArchiveError(f"{path}: a Shoal private key; keys are never shipped "
                                   "(move it out of the app folder)", code="EPERM")
            found.append((relative, path))
    found.sort()
    if len(found) > MAX_FILES:
        raise ArchiveError(f"{folder}: more than {MAX_FILES} files")
    return found


def app_slug(config: AppConfig) -> str:
    """The app's name made safe for a file name (``My Notes`` -> ``my-notes``)."""
    return re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", config.name)
                  .encode("ascii", "ignore").decode().lower()).strip("-") or config.id


def archive_name(config: AppConfig) -> str:
    """``NAME-VERSION.shoal``, NAME being ``app_slug``."""
    version = re.sub(r"[^A-Za-z0-9.+_-]+", "-", config.version)
    return f"{app_slug(config)}-{version}{SUFFIX}"


def build(folder: Path, identity: Identity, out_dir: Path | None = None) -> Built:
    """Sign the app in ``folder`` into ``out_dir`` (default: the folder's parent)."""
    config = load_config(folder)
    check_app_code(folder)
    files: dict[str, tuple[int, str]] = {}
    members = app_files(folder)
    web = "" if config.web_root == "." else config.web_root + "/"
    if web:  # a framework's project: its build folder, not its sources
        kept = {CONFIG_NAME, APP_CODE, config.tray.icon if config.tray else CONFIG_NAME}
        members = [(r, p) for r, p in members if r.startswith(web) or r in kept]
    for relative, path in members:
        _check_member_path(relative, path)
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ArchiveError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        files[relative] = (size, digest.hexdigest())
    # The hashes of the pages' inline code, signed with them: what their policy allows.
    record = inline_record({relative[len(web):]: path.read_text(encoding="utf-8",
                                                                errors="replace")
                            for relative, path in members if relative.startswith(web)
                            and relative.endswith((".html", ".htm"))})
    files[web + INLINE_RECORD] = (len(record), hashlib.sha256(record).hexdigest())
    manifest = Manifest(config.id, config.name, config.version, identity.peer_id, files)
    if manifest.size > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{folder}: more than {MAX_TOTAL_BYTES >> 30} GiB in all")
    raw = _encode_manifest(manifest)
    out_dir = out_dir or folder.resolve().parent
    target = out_dir / archive_name(config)
    with _fresh_file(target) as temporary, zipfile.ZipFile(temporary, "w") as archive:
        _add(archive, MANIFEST, raw)
        _add(archive, SIGNATURE, identity.sign(SIGNING_CONTEXT + raw))
        for relative, path in members:
            _add(archive, PAYLOAD + relative, path.read_bytes())
        _add(archive, PAYLOAD + web + INLINE_RECORD, record)
    return Built(target, manifest, target.stat().st_size)


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data, compresslevel=9)


@contextlib.contextmanager
def _fresh_file(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target``, moved onto it if the block succeeds."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".shoal-build-")
    except OSError as exc:
        raise ArchiveError(f"{target.parent}: cannot write there ({exc.strerror})",
                           code="EACCES") from None
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _encode_manifest(manifest: Manifest) -> bytes:
    body = {
        "format": FORMAT,
        "app": {"id": manifest.app_id, "name": manifest.name, "version": manifest.version},
        "publisher": manifest.publisher,
        "files": {path: {"size": size, "sha256": digest}
                  for path, (size, digest) in manifest.files.items()},
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------------- reading


def read_manifest(path: Path) -> Manifest:
    """Open the archive at ``path`` and check its signature; its files are checked when
    it is unpacked."""
    with _open(path) as archive:
        return _verified_manifest(archive, path)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such file", code="ENOENT") from None
    except IsADirectoryError:
        raise ArchiveError(f"{path}: a folder, not an archive") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
            NotImplementedError, zlib.error) as exc:
        raise ArchiveError(f"{path}: not a Shoal archive, or damaged or truncated ({exc})",
                           code="EBADMSG") from None
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot be read ({exc.strerror or exc})",
                           code="EIO") from None


def _verified_manifest(archive: zipfile.ZipFile, where: Path) -> Manifest:
    names = archive.namelist()
    if len(names) != len(set(names)):
        raise ArchiveError(f"{where}: a member appears twice", code="EBADMSG")
    for name in (MANIFEST, SIGNATURE):
        if name not in names:
            raise ArchiveError(f"{where}: not a Shoal archive (no {name})", code="EBADMSG")
    raw = _read_member(archive, MANIFEST, MAX_MANIFEST_BYTES, where)
    signature = _read_member(archive, SIGNATURE, 64, where)
    try:
        body = json.loads(raw)
        app, files = body["app"], body["files"]
        publisher = body["publisher"]
        if body.get("format") != FORMAT:
            raise ArchiveError(f"{where}: archive format {body.get('format')!r} is not "
                               f"one this Shoal reads ({FORMAT})", code="EPROTONOSUPPORT")
        publisher_key = peer_id_to_bytes(publisher)
        manifest = Manifest(
            app_id=_text(app["id"]), name=_text(app["name"]), version=_text(app["version"]),
            publisher=publisher,
            files={_text(p): (int(f["size"]), _text(f["sha256"])) for p, f in files.items()},
        )
    except ArchiveError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, ShoalError):
        raise ArchiveError(f"{where}: its manifest is malformed", code="EBADMSG") from None
    if peer_id_from_bytes(publisher_key) != publisher:  # one spelling, shown as signed
        raise ArchiveError(f"{where}: its manifest is malformed (publisher {publisher!r})",
                           code="EBADMSG")
    if not verify_signature(publisher_key, SIGNING_CONTEXT + raw, signature):
        raise ArchiveError(f"{where}: the signature does not match its contents "
                           "(tampered with, or not signed by the publisher it names)",
                           code="EBADMSG")
    listed = {PAYLOAD + p for p in manifest.files}
    extra = [n for n in names if n not in (MANIFEST, SIGNATURE) and n not in listed]
    if extra:
        raise ArchiveError(f"{where}: holds {extra[0]!r}, which its manifest does not list",
                           code="EBADMSG")
    folded: set[str] = set()
    for relative, (size, digest) in manifest.files.items():
        _check_member_path(relative, where)
        if relative.casefold() in folded:
            raise ArchiveError(f"{where}: two files differ only in case: {relative!r}",
                               code="EBADMSG")
        folded.add(relative.casefold())
        if not 0 <= size <= MAX_FILE_BYTES or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ArchiveError(f"{where}: its manifest is malformed", code="EBADMSG")
    if len(manifest.files) > MAX_FILES or manifest.size > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{where}: larger than any app this Shoal unpacks", code="EFBIG")
    if CONFIG_NAME not in manifest.files:
        raise ArchiveError(f"{where}: has no {CONFIG_NAME}", code="EBADMSG")
    if not APP_ID.fullmatch(manifest.app_id) or manifest.app_id in RESERVED_APP_IDS:
        raise ArchiveError(f"{where}: {manifest.app_id!r} is not a valid app id",
                           code="EBADMSG")
    if not VERSION.fullmatch(manifest.version):
        raise ArchiveError(f"{where}: {manifest.version!r} is not a valid version",
                           code="EBADMSG")
    return manifest


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, where: Path) -> bytes:
    try:
        with archive.open(name) as member:
            data = member.read(limit + 1)
    except KeyError:
        raise ArchiveError(f"{where}: {name} is listed but missing", code="EBADMSG") from None
    if len(data) > limit:
        raise ArchiveError(f"{where}: {name} is too large", code="EBADMSG")
    return data


def _check_member_path(relative: str, where: object) -> None:
    parts = relative.split("/")
    if "__pycache__" in parts or relative.endswith(BYTECODE_SUFFIXES):
        # Python would run compiled code in place of the source that was shown and signed.
        raise ArchiveError(f"{where}: holds compiled Python ({relative!r}); archives carry "
                           "source only", code="EBADMSG")
    if (
        not relative
        or len(relative.encode()) > MAX_PATH_BYTES
        or relative.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or any(ch in relative for ch in '\\:*?"<>|')
        or any(unicodedata.category(ch).startswith("C") for ch in relative)
    ):
        raise ArchiveError(f"{where}: an archive cannot hold the path {relative!r}",
                           code="EBADMSG")


# ------------------------------------------------------------------------- unpacking


def unpack(path: Path, destination: Path,
           approve: Callable[[Manifest, AppConfig], None] | None = None) -> Manifest:
    """Verify the archive at ``path`` and put its app at ``destination`` (replacing what
    is there). ``approve(manifest, config)`` runs once the signature and the app's
    ``shoal.toml`` verified, before a single file is written; it raises to stop. Then every
    file is checked as it is unpacked; on any failure nothing is left."""
    with _open(path) as archive:
        manifest = _verified_manifest(archive, path)
        config = _signed_config(archive, manifest, destination, path)
    if approve is not None:
        approve(manifest, config)
    made = _make_folders(destination.parent)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".shoal-unpack-"))
    try:
        with _open(path) as archive:
            if _verified_manifest(archive, path) != manifest:
                raise ArchiveError(f"{path}: changed while it was being unpacked",
                                   code="EBADMSG")
            for relative, (size, digest) in manifest.files.items():
                _extract(archive, relative, size, digest, staging, path)
        check_app_code(staging)
        _swap_into(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return manifest


def _signed_config(archive: zipfile.ZipFile, manifest: Manifest, destination: Path,
                   where: Path) -> AppConfig:
    """The app's ``shoal.toml``, read from the archive into memory and checked against
    its signed digest and the manifest, as it will be once unpacked at ``destination``."""
    size, digest = manifest.files[CONFIG_NAME]
    raw = _read_member(archive, PAYLOAD + CONFIG_NAME, MAX_MANIFEST_BYTES, where)
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
        raise ArchiveError(f"{where}: {CONFIG_NAME} does not match its signed digest "
                           "(tampered with or damaged)", code="EBADMSG")
    try:
        config = parse_config(raw.decode("utf-8"), destination, set(manifest.files))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {CONFIG_NAME} is not UTF-8") from None
    if (config.id, config.name, config.version) != (
            manifest.app_id, manifest.name, manifest.version):
        raise ArchiveError(f"{where}: its manifest and {CONFIG_NAME} disagree",
                           code="EBADMSG")
    return config


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones made, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    for each in missing:
        each.mkdir()
    return missing


def _extract(archive: zipfile.ZipFile, relative: str, size: int, digest: str,
             staging: Path, where: Path) -> None:
    target = staging.joinpath(*relative.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    hasher, written = hashlib.sha256(), 0
    try:
        with archive.open(PAYLOAD + relative) as member, open(target, "xb") as out:
            while chunk := member.read(_CHUNK):
                written += len(chunk)
                if written > size:
                    break
                hasher.update(chunk)
                out.write(chunk)
    except KeyError:
        raise ArchiveError(f"{where}: {relative} is listed but missing",
                           code="EBADMSG") from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError,
            zlib.error) as exc:
        raise ArchiveError(f"{where}: {relative} cannot be unpacked ({exc})",
                           code="EBADMSG") from None
    if written != size or hasher.hexdigest() != digest:
        raise ArchiveError(f"{where}: {relative} does not match its signed digest "
                           "(tampered with or damaged)", code="EBADMSG")
    os.chmod(target, 0o644)


def _swap_into(staging: Path, destination: Path) -> None:
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
    try:
        os.replace(staging, destination)
    except OSError:
        if old is not None:
            os.replace(old, destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------- capabilities


def capabilities(config: AppConfig) -> list[str]:
    """What the app may do on this machine, one line each, for a person to approve."""
    p = config.permissions
    lines = []
    if config.has_code:
        lines.append(f"runs its own Python code ({APP_CODE}) with your user's rights")
    if p.invoke:
        lines.append("page calls Python functions: " + ", ".join(p.invoke))
    for folder in p.fs_read:
        lines.append(f"read files in {folder}")
    for folder in p.fs_write:
        lines.append(f"read and write files in {folder}")
    ordinary = [c for c in p.commands if not runs_any_program(c)]
    if ordinary:
        lines.append("run these programs, with any arguments and your user's rights: "
                     + ", ".join(ordinary))
    for command in p.commands:
        if runs_any_program(command):
            lines.append(f"run {command}, which can run any program: in effect, run "
                         "anything with your user's rights")
    if p.env:
        lines.append("read environment variables (its programs get these only): "
                     + ", ".join(p.env))
    if p.hotkeys:
        lines.append("notice these keys in any window: " + ", ".join(p.hotkeys))
    if config.scheme is not None:
        lines.append(f"open {config.scheme}: links from anywhere on this computer (it "
                     "becomes their handler)")
    plain = {"os": "read facts about this computer (os)", "dns": "look up host names",
             "network": "talk to other peers over the Shoal network",
             "window": "control its window", "dialog": "show file and message dialogs",
             "notification": "show notifications", "clipboard": "read and write the clipboard",
             "shell": "open links and files in other programs"}
    lines += [text for name, text in plain.items() if getattr(p, name)]
    for host, port in p.dgram:
        lines.append(f"send UDP datagrams to {host}:{'any port' if port is None else port}")
    for directive, sources in config.csp.items():
        lines.append(f"load {directive} from {' '.join(sources)}")
    return lines or ["nothing beyond showing its own pages"]


def approval_digest(manifest: Manifest, lines: list[str]) -> str:
    """What a person approved: this publisher's app asking for exactly these things."""
    body = json.dumps([manifest.app_id, manifest.publisher, lines]).encode()
    return hashlib.sha256(body).hexdigest()


def _grants_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("shoal")) / "grants.json"


def granted(app_id: str, digest: str) -> bool:
    """Whether the user granted exactly this (an ``approval_digest``) to ``app_id``."""
    return read_record(_grants_path()).get(app_id) == digest


def remember_grant(app_id: str, digest: str) -> None:
    """Note that the user granted ``digest`` to ``app_id`` (it replaces earlier grants)."""
    path = _grants_path()
    grants = read_record(path)
    if grants.get(app_id) != digest:
        grants[app_id] = digest
        write_record(path, grants)


def _publishers_path() -> Path:
    return _grants_path().with_name("publishers.json")


def pinned_publisher(app_id: str) -> str | None:
    """The publisher this user's copy of ``app_id`` comes from: the installed app's, or
    that of the archive first run under that id. Its data folder and node key are that
    publisher's app's alone."""
    current = installed(app_id)
    if current is not None:
        return current.publisher
    publisher = read_record(_publishers_path()).get(app_id)
    return publisher if isinstance(publisher, str) else None


def check_publisher(manifest: Manifest, where: Path) -> None:
    """Refuse an archive signed by another publisher than the one ``app_id`` is pinned
    to (``EPERM``): it would run with that app's data folder and node key."""
    pinned = pinned_publisher(manifest.app_id)
    if pinned is not None and pinned != manifest.publisher:
        raise ArchiveError(
            f"{where}: {manifest.app_id} here comes from publisher {pinned[:16]}…, and this "
            f"archive is signed by {manifest.publisher[:16]}…; it may not use that app's "
            "data and identity (uninstall it first to change publisher)", code="EPERM")


def pin_publisher(manifest: Manifest) -> None:
    """Pin ``manifest.app_id`` to its publisher (if it is not pinned yet)."""
    path = _publishers_path()
    pins = read_record(path)
    if manifest.app_id not in pins:
        pins[manifest.app_id] = manifest.publisher
        write_record(path, pins)


def _unpin_publisher(app_id: str) -> None:
    path = _publishers_path()
    pins = read_record(path)
    if pins.pop(app_id, None) is not None:
        write_record(path, pins)


# ------------------------------------------------------------------------- installing


@dataclass(frozen=True, slots=True)
class Installed:
    app_id: str
    name: str
    version: str
    publisher: str
    folder: Path
    """The installed app's files."""
    desktop_entry: Path | None = None


def installed_root() -> Path:
    """Where installed apps live: ``$SHOAL_APPS_DIR`` or the user data dir."""
    base = os.environ.get("SHOAL_APPS_DIR")
    if base:
        return Path(base)
    import platformdirs

    return Path(platformdirs.user_data_dir("shoal")) / "installed"


def installed(app_id: str) -> Installed | None:
    """The installed app with this id, if any."""
    if not APP_ID.fullmatch(app_id) or app_id in RESERVED_APP_IDS:
        return None
    record = installed_root() / app_id / "install.json"
    try:
        body = json.loads(record.read_text(encoding="utf-8"))
        return Installed(app_id, body["name"], body["version"], body["publisher"],
                         record.parent / "app", _entry_path(app_id))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def install(path: Path, approve: Callable[[Manifest, AppConfig], None] | None = None,
            *, desktop_entry: bool = True) -> Installed:
    """Install the archive at ``path``: verified, then approved, then put in place. A newer
    archive of an installed app from the same publisher replaces it; another publisher's
    archive with the same app id is refused, and so is an older version."""
    first = read_manifest(path)  # the app id, and a bad archive refused early
    home = installed_root() / first.app_id

    def check(manifest: Manifest, config: AppConfig) -> None:
        # The manifest that verified with the files, not the first read: the file may
        # have been replaced in between.
        if manifest.app_id != first.app_id:
            raise ArchiveError(f"{path}: changed while it was being installed",
                               code="EBADMSG")
        _check_upgrade(path, manifest)
        if config.scheme is not None:
            _check_scheme(path, config.scheme, manifest.app_id)
        if approve is not None:
            approve(manifest, config)

    manifest = unpack(path, home / "app", check)
    record = {"name": manifest.name, "version": manifest.version,
              "publisher": manifest.publisher}
    with _fresh_file(home / "install.json") as temporary:
        temporary.write_text(json.dumps(record), encoding="utf-8")
    scheme = load_config(home / "app").scheme
    entry = _write_desktop_entry(manifest, home / "app", scheme) if desktop_entry else None
    return Installed(manifest.app_id, manifest.name, manifest.version, manifest.publisher,
                     home / "app", entry)


def _check_upgrade(path: Path, manifest: Manifest) -> None:
    """Only the installed app's publisher may replace it, and only with a version at
    least as new; an app id pinned to a publisher by a run is installed from it only."""
    check_publisher(manifest, path)
    current = installed(manifest.app_id)
    if current is not None and _version_key(manifest.version) < _version_key(current.version):
        raise ArchiveError(f"{path}: {manifest.app_id} {current.version} is installed, "
                           f"newer than this archive's {manifest.version}", code="EEXIST")


def uninstall(app_id: str) -> Installed:
    """Remove an installed app and its desktop entry (its data folder stays)."""
    current = installed(app_id)
    if current is None:
        raise ArchiveError(f"{app_id}: no such app is installed", code="ENOENT")
    shutil.rmtree(installed_root() / app_id)
    if current.desktop_entry is not None:
        current.desktop_entry.unlink(missing_ok=True)
        _set_scheme_handler(current.desktop_entry.name, None)
    _unpin_publisher(app_id)
    return current


def _version_key(version: str) -> tuple[Any, ...]:
    """Versions (``config.VERSION``) in order: dotted numbers compare as numbers (1.10 >
    1.9, 1.0 = 1.0.0), a pre-release comes before its release (1.0.0-rc1 < 1.0.0), and
    build metadata (``+...``) is ignored."""
    release, _, pre = version.split("+", 1)[0].partition("-")
    numbers = [int(part) for part in release.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    if not pre:
        return (tuple(numbers), 1, ())
    return (tuple(numbers), 0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                                     for p in pre.split(".")))


def _entry_path(app_id: str) -> Path | None:
    if not sys.platform.startswith("linux"):
        return None
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "applications" / f"shoal-{app_id}.desktop"


def _write_desktop_entry(manifest: Manifest, folder: Path, scheme: str | None) -> Path | None:
    """A freedesktop.org entry that starts the installed app (Linux), and opens its
    deep links when it has a scheme."""
    path = _entry_path(manifest.app_id)
    if path is None:
        return None
    command = " ".join(_exec_argument(a) for a in
                       (sys.executable, "-m", "shoal.cli.main", "run", str(folder)))
    if scheme is not None:
        command += " --url %u"
    name = " ".join(manifest.name.split())
    lines = ["[Desktop Entry]", "Type=Application", f"Name={name}",
             f"Comment={name}, a Shoal app", f"Exec={command}", "Terminal=false",
             "Categories=Network;", f"X-Shoal-App-Id={manifest.app_id}",
             f"X-Shoal-Publisher={manifest.publisher}"]
    if scheme is not None:
        lines.append(f"MimeType=x-scheme-handler/{scheme};")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _fresh_file(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _set_scheme_handler(path.name, scheme)
    return path


def _check_scheme(where: Path, scheme: str, app_id: str) -> None:
    """Refuse (``EEXIST``) a scheme another program or app already handles: its links,
    login callbacks included, are not this app's to take."""
    own = f"shoal-{app_id}.desktop"
    owner = next((o for o in scheme_handlers(scheme) if o != own), None)
    if owner is not None:
        raise ArchiveError(f"{where}: {scheme}: links are handled by {owner} already; an app "
                           "may not take another program's links", code="EEXIST")


def scheme_handlers(scheme: str) -> list[str]:
    """The desktop entries that handle ``scheme:`` links for this user (Linux): those the
    user's and the system's ``mimeapps.list`` name, and those that declare it."""
    if not sys.platform.startswith("linux"):
        return []
    home = Path.home()
    config_dirs = [os.environ.get("XDG_CONFIG_HOME") or str(home / ".config"),
                   *(os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")]
    data_dirs = [os.environ.get("XDG_DATA_HOME") or str(home / ".local" / "share"),
                 *(os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share")
                 .split(":")]
    mime = f"x-scheme-handler/{scheme}"
    found: list[str] = []
    lists = [Path(d) / "mimeapps.list" for d in config_dirs if d]
    lists += [Path(d) / "applications" / "mimeapps.list" for d in data_dirs if d]
    for path in lists:
        for line in _lines(path):
            key, _, value = line.partition("=")
            if key.strip() == mime:
                found += [e for e in value.strip().split(";") if e]
    for folder in (Path(d) / "applications" for d in data_dirs if d):
        with contextlib.suppress(OSError):
            for entry in sorted(folder.glob("*.desktop")):
                for line in _lines(entry):
                    if line.startswith("MimeType=") and mime in line[9:].split(";"):
                        found.append(entry.name)
    return list(dict.fromkeys(found))


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _set_scheme_handler(entry: str, scheme: str | None) -> None:
    """Make ``entry`` the user's handler of ``scheme:`` links in ``mimeapps.list`` (and
    drop whatever it handled before); ``None``: drop them only."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = Path(config_home) / "mimeapps.list"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError:
        return
    kept = [line for line in lines if not (
        line.startswith("x-scheme-handler/") and line.split("=", 1)[-1].strip() == entry)]
    if scheme is not None:
        key = f"x-scheme-handler/{scheme}="
        kept = [line for line in kept if not line.startswith(key)]
        if "[Default Applications]" not in kept:
            kept += ["[Default Applications]"]
        kept.insert(kept.index("[Default Applications]") + 1, key + entry)
    if kept == lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _fresh_file(path) as temporary:
        temporary.write_text("\n".join(kept) + "\n", encoding="utf-8")


def _exec_argument(text: str) -> str:
    """One argument of a desktop entry's Exec key, quoted as its specification asks."""
    escaped = text.replace("%", "%%")
    if re.fullmatch(r"[A-Za-z0-9_./=+,@:-]+", escaped):
        return escaped
    for ch in '\\"`$':
        escaped = escaped.replace(ch, "\\" + ch)
    return f'"{escaped}"'
