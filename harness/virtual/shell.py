"""The virtual phone's `/system/bin/sh`: sh-like parsing and a small interpreter over a command table.

Real clients send what they would send a phone's mksh: adbutils quotes every argument,
`adb exec-out` single-quotes all but the first, uiautomator2 prefixes `CLASSPATH=... app_process`,
adbutils' `shell2()` appends `; echo X4EXIT:$?`. This understands that syntax (quotes, `;`, `&&`,
`||`, `|`, `&`, redirections, `VAR=value` prefixes, `$?`/`$VAR`/`$(...)`, globs) and runs the
result against a table of commands; the Android-specific commands live in `android.py`.
Unknown commands fail the way mksh fails: `/system/bin/sh: X: inaccessible or not found`, 127.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import posixpath
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast

from harness.virtual.services import FileStat, FileSystem

SH = "/system/bin/sh"


class ShellSyntaxError(Exception):
    """A command line mksh would refuse; the message is what mksh prints after `sh: `."""


# ----------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of a word: literal text, a `$NAME` expansion or a `$(...)` substitution."""

    kind: str  # "lit" | "var" | "cmd"
    value: str
    quoted: bool = False


@dataclass(slots=True)
class Word:
    parts: list[Part] = field(default_factory=list)

    def literal(self) -> str | None:
        """The word's text when it has no expansion (used for assignments and keywords)."""
        if all(p.kind == "lit" for p in self.parts):
            return "".join(p.value for p in self.parts)
        return None


@dataclass(slots=True)
class Redirect:
    fd: int
    op: str  # ">", ">>", "<", ">&"
    target: Word


@dataclass(slots=True)
class Command:
    assigns: list[tuple[str, Word]] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    group: list[AndOr] | None = None  # `( list )` or `{ list; }`
    subshell: bool = False


@dataclass(slots=True)
class Pipeline:
    commands: list[Command]
    bang: bool = False


@dataclass(slots=True)
class AndOr:
    first: Pipeline
    rest: list[tuple[str, Pipeline]] = field(default_factory=list)
    background: bool = False


_OPERATORS = ("&&", "||", ";;", ">>", "<<", ">&", "<&", "&>", ";", "|", "&", ">", "<", "\n", "(", ")")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _matching_paren(text: str, start: int) -> int:
    """Index of the `)` closing the `$(` whose body starts at `start`, honouring quotes."""
    depth = 1
    i = start
    quote: str | None = None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "\\":
            i += 2
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ShellSyntaxError("no closing quote")


def _dollar(text: str, i: int, quoted: bool, parts: list[Part]) -> int:
    """Parse the expansion starting at text[i] == '$'; returns the index after it."""
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if nxt == "(":
        end = _matching_paren(text, i + 2)
        parts.append(Part("cmd", text[i + 2 : end], quoted))
        return end + 1
    if nxt == "{":
        end = text.find("}", i + 2)
        if end < 0:
            raise ShellSyntaxError("${: bad substitution")
        parts.append(Part("var", text[i + 2 : end], quoted))
        return end + 1
    if nxt and nxt in "?$#!0123456789":
        parts.append(Part("var", nxt, quoted))
        return i + 2
    match = _NAME.match(text, i + 1)
    if match:
        parts.append(Part("var", match.group(0), quoted))
        return match.end()
    parts.append(Part("lit", "$", quoted))
    return i + 1


def tokenize(text: str) -> list[Word | str]:
    """Split a command line into words and operator strings."""
    tokens: list[Word | str] = []
    i = 0
    n = len(text)
    word: Word | None = None

    def lit(value: str, quoted: bool) -> None:
        assert word is not None
        if word.parts and word.parts[-1].kind == "lit" and word.parts[-1].quoted == quoted:
            last = word.parts.pop()
            value = last.value + value
        word.parts.append(Part("lit", value, quoted))

    while i < n:
        ch = text[i]
        if ch in " \t":
            if word is not None:
                tokens.append(word)
                word = None
            i += 1
            continue
        if ch == "#" and word is None:
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == "\\" and i + 1 < n and text[i + 1] == "\n":
            i += 2
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is not None:
            # `2>`, `2>&1`: a word of digits directly before a redirection is its fd.
            if op[0] in "<>" and word is not None and (lit_text := word.literal()) and lit_text.isdigit():
                tokens.append(lit_text)
                word = None
            elif word is not None:
                tokens.append(word)
                word = None
            tokens.append(op)
            i += len(op)
            continue
        if word is None:
            word = Word()
        if ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("no closing quote")
            lit(text[i + 1 : end], True)
            if end == i + 1:
                word.parts.append(Part("lit", "", True))
            i = end + 1
        elif ch == '"':
            i += 1
            start_parts = len(word.parts)
            while True:
                if i >= n:
                    raise ShellSyntaxError("no closing quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$`\n':
                    if text[i + 1] != "\n":
                        lit(text[i + 1], True)
                    i += 2
                elif c == "$":
                    i = _dollar(text, i, True, word.parts)
                elif c == "`":
                    end = text.find("`", i + 1)
                    if end < 0:
                        raise ShellSyntaxError("no closing quote")
                    word.parts.append(Part("cmd", text[i + 1 : end], True))
                    i = end + 1
                else:
                    lit(c, True)
                    i += 1
            if len(word.parts) == start_parts:
                word.parts.append(Part("lit", "", True))
        elif ch == "\\":
            if i + 1 < n:
                lit(text[i + 1], True)
            i += 2
        elif ch == "$":
            i = _dollar(text, i, False, word.parts)
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise ShellSyntaxError("no closing quote")
            word.parts.append(Part("cmd", text[i + 1 : end], False))
            i = end + 1
        else:
            lit(ch, False)
            i += 1
    if word is not None:
        tokens.append(word)
    return tokens


_REDIRECT_OPS = (">", ">>", "<", ">&", "&>", "<&")


class _Parser:
    """Recursive descent over the token list: lists, and-or, pipelines, commands, groups."""

    def __init__(self, tokens: list[Word | str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Word | str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _is_word(self, text: str) -> bool:
        tok = self.peek()
        return isinstance(tok, Word) and tok.literal() == text and not any(p.quoted for p in tok.parts)

    def script(self, closer: str | None = None) -> list[AndOr]:
        result: list[AndOr] = []
        while True:
            tok = self.peek()
            if tok is None:
                if closer is not None:
                    raise ShellSyntaxError(f"syntax error: unexpected end of input, expecting '{closer}'")
                return result
            if tok in (";", "\n"):
                self.pos += 1
                continue
            if (closer == ")" and tok == ")") or (closer == "}" and self._is_word("}")):
                self.pos += 1
                return result
            if isinstance(tok, str) and tok not in _REDIRECT_OPS and tok != "(" and not tok.isdigit():
                raise ShellSyntaxError(f"syntax error: '{tok}' unexpected")
            andor = AndOr(self.pipeline())
            while self.peek() in ("&&", "||"):
                op = self.peek()
                assert isinstance(op, str)
                self.pos += 1
                while self.peek() == "\n":
                    self.pos += 1
                andor.rest.append((op, self.pipeline()))
            tok = self.peek()
            if tok == "&":
                andor.background = True
                self.pos += 1
            elif tok in (";", "\n"):
                self.pos += 1
            elif tok is not None and not (closer == ")" and tok == ")") and not (closer == "}" and self._is_word("}")):
                raise ShellSyntaxError(f"syntax error: '{tok}' unexpected")
            result.append(andor)

    def pipeline(self) -> Pipeline:
        bang = False
        if self._is_word("!"):
            bang = True
            self.pos += 1
        commands = [self.command()]
        while self.peek() == "|":
            self.pos += 1
            while self.peek() == "\n":
                self.pos += 1
            commands.append(self.command())
        for cmd in commands:
            if not cmd.words and not cmd.assigns and not cmd.redirects and cmd.group is None:
                tok = self.peek()
                raise ShellSyntaxError(f"syntax error: '{tok if tok is not None else 'newline'}' unexpected")
        return Pipeline(commands, bang)

    def command(self) -> Command:
        cmd = Command()
        if self.peek() == "(":
            self.pos += 1
            cmd.group, cmd.subshell = self.script(")"), True
        elif self._is_word("{"):
            self.pos += 1
            cmd.group = self.script("}")
        while True:
            tok = self.peek()
            if tok is None:
                break
            if isinstance(tok, str):
                fd: int | None = None
                if tok.isdigit() and self.pos + 1 < len(self.tokens) and isinstance(self.tokens[self.pos + 1], str):
                    fd = int(tok)
                    self.pos += 1
                    tok = self.tokens[self.pos]
                    assert isinstance(tok, str)
                if tok in _REDIRECT_OPS:
                    self.pos += 1
                    target = self.peek()
                    if not isinstance(target, Word):
                        raise ShellSyntaxError(f"syntax error: '{tok}' unexpected")
                    self.pos += 1
                    if tok == "&>":
                        cmd.redirects.append(Redirect(1, ">", target))
                        cmd.redirects.append(Redirect(2, ">&", Word([Part("lit", "1")])))
                    elif tok == "<&":
                        cmd.redirects.append(Redirect(0 if fd is None else fd, "<", target))
                    else:
                        default = 0 if tok == "<" else 1
                        cmd.redirects.append(Redirect(default if fd is None else fd, tok, target))
                    continue
                if fd is not None:
                    raise ShellSyntaxError(f"syntax error: '{tok}' unexpected")
                break
            if cmd.group is not None:
                raise ShellSyntaxError(f"syntax error: '{tok.literal() or 'word'}' unexpected")
            if not cmd.words and self._is_word("}"):
                break
            self.pos += 1
            name = tok.literal()
            if not cmd.words and name and "=" in name and _NAME.fullmatch(name.split("=", 1)[0]):
                key = name.split("=", 1)[0]
                cmd.assigns.append((key, Word([Part("lit", name.split("=", 1)[1])])))
            elif not cmd.words and tok.parts and tok.parts[0].kind == "lit" and not tok.parts[0].quoted and (
                m := re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", tok.parts[0].value, re.S)
            ):
                rest = [Part("lit", m.group(2))] if m.group(2) else []
                cmd.assigns.append((m.group(1), Word(rest + tok.parts[1:])))
            else:
                cmd.words.append(tok)
        return cmd


def parse(text: str) -> list[AndOr]:
    """Parse a command line into and-or lists (separated by `;`, `&` or newlines)."""
    return _Parser(tokenize(text)).script()


def quote(arg: str) -> str:
    """Quote one argument for this shell (used when a command re-runs argv through `sh -c`)."""
    if arg and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


# ----------------------------------------------------------------------------------------------
# Streams


class Reader(Protocol):
    async def read(self) -> bytes:
        """Next chunk; b"" at end of input."""


class Writer(Protocol):
    async def write(self, data: bytes) -> None: ...


class EmptyReader:
    async def read(self) -> bytes:
        return b""


class BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self) -> bytes:
        data, self._data = self._data, b""
        return data


class NullWriter:
    async def write(self, data: bytes) -> None:
        return None


class BufferWriter:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data


class Pipe:
    """`a | b`: bounded, so a fast writer waits for a slow reader; a closed reader breaks the pipe."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self._eof = False
        self._reader_gone = False

    async def write(self, data: bytes) -> None:
        if self._reader_gone:
            raise BrokenPipeError
        if data:
            await self._queue.put(data)
            if self._reader_gone:
                raise BrokenPipeError

    async def close_write(self) -> None:
        if not self._reader_gone:
            await self._queue.put(b"")

    def close_read(self) -> None:
        self._reader_gone = True
        while not self._queue.empty():
            self._queue.get_nowait()

    async def read(self) -> bytes:
        if self._eof:
            return b""
        data = await self._queue.get()
        if not data:
            self._eof = True
        return data


# ----------------------------------------------------------------------------------------------
# Running


class ShellFS(FileSystem, Protocol):
    """The file system as the shell needs it: the sync protocol plus mkdir and rm."""

    def mkdir(self, path: str, mode: int = 0o771) -> str | None: ...

    def remove(self, path: str) -> str | None: ...

    def as_user(self, uid: int) -> ShellFS:
        """The same files, with `uid`'s permissions."""


class ExitShell(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(slots=True)
class Proc:
    """What a command sees: its argv, environment, streams and the shell that runs it."""

    argv: list[str]
    env: dict[str, str]
    stdin: Reader
    stdout: Writer
    stderr: Writer
    shell: Shell
    pid: int = 0

    async def out(self, data: str | bytes) -> None:
        await self.stdout.write(data.encode() if isinstance(data, str) else data)

    async def err(self, data: str | bytes) -> None:
        await self.stderr.write(data.encode() if isinstance(data, str) else data)

    async def read_all(self) -> bytes:
        chunks = []
        while chunk := await self.stdin.read():
            chunks.append(chunk)
        return b"".join(chunks)

    @property
    def root(self) -> bool:
        return self.shell.uid == 0


Handler = Callable[[Proc], Awaitable[int]]


class CommandTable:
    """Commands by name, as found in /system/bin (toybox applets included)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._paths: dict[str, str] = {}

    def add(self, name: str, handler: Handler, path: str | None = None) -> None:
        self._handlers[name] = handler
        self._paths[name] = f"/system/bin/{name}" if path is None else path

    def remove(self, name: str) -> None:
        self._handlers.pop(name, None)
        self._paths.pop(name, None)

    def lookup(self, name: str) -> Handler | None:
        if "/" in name:
            base = posixpath.basename(name)
            path = self._paths.get(base)
            return self._handlers.get(base) if path and path == posixpath.normpath(name) else None
        return self._handlers.get(name)

    def path(self, name: str) -> str | None:
        return self._paths.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)


@dataclass(slots=True)
class Job:
    """One running process of the phone's shell: a command's task, or a real tool behind `on_signal`."""

    pid: int
    uid: int
    name: str
    task: asyncio.Task[object] | None
    on_signal: Callable[[int], None] | None = None
    signalled: int | None = None


SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
           "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
           "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
           "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "PWR": 30, "SYS": 31}
_IGNORED_SIGNALS = {0, 17, 18, 19, 20, 21, 22, 23, 28}  # no effect on a command that does not catch them


class ProcessTable:
    """The phone's pids: every command, shell and background job gets one; `kill` finds them here.

    A pid can be held by several nested jobs (`exec` and `sh -c` keep their pid): a signal goes to
    the innermost, which is the program that replaced the others.
    """

    def __init__(self, first: int = 4000, others: Callable[[], dict[int, int]] | None = None) -> None:
        self._next = first
        self._first = first
        self.jobs: dict[int, list[Job]] = {}
        self.others = others or (lambda: {})  # pid -> uid of processes that are not shell jobs

    def new_pid(self) -> int:
        while True:
            self._next = self._next + 1 if self._next < 32767 else self._first
            if self._next not in self.jobs and self._next not in self.others():
                return self._next

    def start(self, pid: int, uid: int, name: str, task: asyncio.Task[object] | None) -> Job:
        job = Job(pid, uid, posixpath.basename(name), task)
        self.jobs.setdefault(pid, []).append(job)
        return job

    def end(self, job: Job) -> None:
        stack = self.jobs.get(job.pid, [])
        if job in stack:
            stack.remove(job)
        if not stack:
            self.jobs.pop(job.pid, None)

    def on_signal(self, pid: int, callback: Callable[[int], None] | None) -> None:
        """The program running as `pid` handles signals itself (a real tool run on the host)."""
        stack = self.jobs.get(pid)
        if stack:
            stack[-1].on_signal = callback

    def running(self) -> list[Job]:
        return [stack[-1] for _pid, stack in sorted(self.jobs.items()) if stack]

    def signal(self, pid: int, sig: int, sender_uid: int) -> str | None:
        """Deliver `sig`; the error toybox kill prints (without the `kill: PID: ` prefix), or None."""
        stack = self.jobs.get(pid)
        if not stack:
            owner = self.others().get(pid)
            if owner is None:
                return "No such process"
            return None if sender_uid in (0, owner) else "Operation not permitted"
        job = stack[-1]
        if sender_uid not in (0, job.uid):
            return "Operation not permitted"
        if job.on_signal is not None:
            job.on_signal(sig)
            return None
        if sig in _IGNORED_SIGNALS:
            return None
        job.signalled = sig
        if job.task is not None:
            job.task.cancel()
        return None


class Shell:
    """One shell process: its variables, `$?`, `$$`, `$!`, working directory and user."""

    def __init__(
        self,
        table: CommandTable,
        fs: ShellFS,
        *,
        uid: int = 2000,
        env: dict[str, str] | None = None,
        cwd: str = "/",
        pid: int | None = None,
        spawn: Callable[[Awaitable[object]], object] | None = None,
        procs: ProcessTable | None = None,
    ) -> None:
        self.table = table
        self.fs = fs
        self.uid = uid
        self.vars: dict[str, str] = dict(env or {})
        self.cwd = cwd
        self.procs = procs if procs is not None else ProcessTable()
        self.pid = self.procs.new_pid() if pid is None else pid  # `$$`
        self.last_background = ""  # `$!`
        self.background: dict[int, asyncio.Future[int]] = {}  # this shell's `&` jobs, for `wait`
        self.status = 0
        self.exited = False  # `exit` ran: an interactive session ends
        self._spawn = spawn or (lambda coro: asyncio.ensure_future(coro))

    def child(self, *, uid: int | None = None, pid: int | None = None) -> Shell:
        """A subshell (same `$$`, as POSIX says), or with `pid` a new shell process (`sh -c`, `su`)."""
        fs = self.fs if uid is None or uid == self.uid else self.fs.as_user(uid)
        return Shell(self.table, fs, uid=self.uid if uid is None else uid, env=dict(self.vars),
                     cwd=self.cwd, pid=self.pid if pid is None else pid, spawn=self._spawn, procs=self.procs)

    def abspath(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, path)) if path else self.cwd

    async def run(self, text: str, stdin: Reader, stdout: Writer, stderr: Writer) -> int:
        """Run a command line; returns the exit status (`exit N` ends it early)."""
        try:
            script = parse(text)
        except ShellSyntaxError as exc:
            await stderr.write(f"{SH}: {exc}\n".encode())
            self.status = 1
            return 1
        try:
            await self._script(script, stdin, stdout, stderr)
        except ExitShell as done:
            self.status = done.code
            self.exited = True
        return self.status

    async def _script(self, script: list[AndOr], stdin: Reader, stdout: Writer, stderr: Writer) -> int:
        for andor in script:
            if andor.background:
                pid = self.procs.new_pid()
                self.last_background = str(pid)
                job = self._spawn(self._background(andor, pid, _Quiet(stdout), _Quiet(stderr)))
                if isinstance(job, asyncio.Future):
                    self.background[pid] = job
                self.status = 0
            else:
                self.status = await self._andor(andor, stdin, stdout, stderr)
        return self.status

    async def _background(self, andor: AndOr, pid: int, stdout: Writer, stderr: Writer) -> int:
        """`LIST &`: a forked shell with its own pid; a lone simple command runs as that pid (`$!`)."""
        sub = self.child()
        single = (not andor.rest and len(andor.first.commands) == 1 and andor.first.commands[0].group is None
                  and not andor.first.bang)
        task = asyncio.current_task()
        job = self.procs.start(pid, self.uid, "sh", cast("asyncio.Task[object] | None", task))
        try:
            if single:
                return await sub._command(andor.first.commands[0], EmptyReader(), stdout, stderr, pid=pid)
            return await sub._andor(andor, EmptyReader(), stdout, stderr)
        except ExitShell as done:
            return done.code
        except asyncio.CancelledError:
            if job.signalled is None:
                raise
            return 128 + job.signalled
        finally:
            self.procs.end(job)

    async def run_argv(self, argv: list[str], stdin: Reader, stdout: Writer, stderr: Writer,
                       env: dict[str, str] | None = None, *, pid: int | None = None) -> int:
        """Run one command from an argv (no parsing) as process `pid` (default: a new one, as fork+exec)."""
        handler = self.table.lookup(argv[0]) if argv else None
        if handler is None:
            if argv:
                await stderr.write(f"{SH}: {argv[0]}: inaccessible or not found\n".encode())
            return 127
        pid = self.procs.new_pid() if pid is None else pid
        proc = Proc(argv, {**self.vars, **(env or {})}, stdin, stdout, stderr, self, pid)
        task: asyncio.Task[int] = asyncio.ensure_future(handler(proc))
        job = self.procs.start(pid, self.uid, argv[0], cast("asyncio.Task[object]", task))
        try:
            return await task
        except BrokenPipeError:
            return 141
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if job.signalled is None or (current is not None and current.cancelling()):
                raise
            return 128 + job.signalled
        finally:
            self.procs.end(job)

    async def _andor(self, andor: AndOr, stdin: Reader, stdout: Writer, stderr: Writer) -> int:
        status = await self._pipeline(andor.first, stdin, stdout, stderr)
        for op, pipeline in andor.rest:
            if (op == "&&") == (status == 0):
                status = await self._pipeline(pipeline, stdin, stdout, stderr)
            self.status = status
        return status

    async def _pipeline(self, pipeline: Pipeline, stdin: Reader, stdout: Writer, stderr: Writer) -> int:
        if len(pipeline.commands) == 1:
            status = await self._command(pipeline.commands[0], stdin, stdout, stderr)
        else:
            pipes = [Pipe() for _ in pipeline.commands[1:]]

            async def stage(index: int) -> int:
                cmd = pipeline.commands[index]
                cin: Reader = stdin if index == 0 else pipes[index - 1]
                cout: Writer = stdout if index == len(pipes) else pipes[index]
                try:
                    return await self._command(cmd, cin, cout, stderr)
                except BrokenPipeError:
                    return 141
                finally:
                    if index < len(pipes):
                        await pipes[index].close_write()
                    if index > 0:
                        pipes[index - 1].close_read()

            results = await asyncio.gather(*(stage(i) for i in range(len(pipeline.commands))))
            status = results[-1]
        self.status = (0 if status else 1) if pipeline.bang else status
        return self.status

    async def _expand(self, word: Word) -> list[str]:
        """Expand one word: variables, command substitution, then globs on unquoted text."""
        text = []
        pattern = []
        globbed = False
        for part in word.parts:
            if part.kind == "lit":
                value = part.value
                if not part.quoted and any(c in value for c in "*?["):
                    globbed = True
                    pattern.append(value)
                else:
                    pattern.append(re.sub(r"([*?\[])", r"[\1]", value))
            elif part.kind == "var":
                value = self._variable(part.value)
                pattern.append(re.sub(r"([*?\[])", r"[\1]", value))
            else:
                out = BufferWriter()
                sub = self.child()
                await sub.run(part.value, EmptyReader(), out, _Quiet(NullWriter()))
                self.status = sub.status
                value = out.data.decode(errors="replace").rstrip("\n")
                pattern.append(re.sub(r"([*?\[])", r"[\1]", value))
            text.append(value)
        if globbed:
            matches = self._glob("".join(pattern))
            if matches:
                return matches
        return ["".join(text)]

    def _variable(self, name: str) -> str:
        if name == "?":
            return str(self.status)
        if name == "$":
            return str(self.pid)
        if name == "!":
            return self.last_background
        if name == "#":
            return "0"
        if name == "0":
            return "sh"
        if ":-" in name:
            key, default = name.split(":-", 1)
            return self.vars.get(key) or default
        return self.vars.get(name, "")

    def _glob(self, pattern: str) -> list[str]:
        absolute = pattern.startswith("/")
        parts = [p for p in pattern.split("/") if p]
        found = ["/" if absolute else ""]
        for part in parts:
            nxt = []
            for base in found:
                directory = base or self.cwd
                if any(c in part for c in "*?["):
                    for name, _stat in sorted(self.fs.listdir(self.abspath(directory)) or []):
                        if not name.startswith(".") and fnmatch.fnmatchcase(name, part):
                            nxt.append(posixpath.join(base, name) if base else name)
                else:
                    literal = re.sub(r"\[(.)\]", r"\1", part)
                    candidate = posixpath.join(base, literal) if base else literal
                    if self.fs.stat(self.abspath(candidate)) is not None:
                        nxt.append(candidate)
            found = nxt
        return sorted(found)

    async def _command(self, cmd: Command, stdin: Reader, stdout: Writer, stderr: Writer, *,
                       pid: int | None = None) -> int:
        env: dict[str, str] = {}
        for key, value in cmd.assigns:
            env[key] = " ".join(await self._expand(value))
        argv: list[str] = []
        for word in cmd.words:
            argv.extend(await self._expand(word))
        fds: dict[int, Reader | Writer] = {0: stdin, 1: stdout, 2: stderr}
        files: list[FileWriter] = []
        for redirect in cmd.redirects:
            target = " ".join(await self._expand(redirect.target))
            if redirect.op == ">&":
                if target.isdigit() and int(target) in fds:
                    fds[redirect.fd] = fds[int(target)]
                elif target == "-":
                    fds[redirect.fd] = NullWriter()
                else:
                    await stderr.write(f"{SH}: {target}: bad file descriptor\n".encode())
                    return 1
            elif redirect.op == "<":
                if target == "/dev/null":
                    fds[redirect.fd] = EmptyReader()
                    continue
                data = self.fs.read(self.abspath(target))
                if data is None:
                    await stderr.write(f"{SH}: can't open {target}: No such file or directory\n".encode())
                    return 1
                fds[redirect.fd] = BytesReader(data)
            elif target == "/dev/null":
                fds[redirect.fd] = NullWriter()
            else:
                writer = FileWriter(self.fs, self.abspath(target), append=redirect.op == ">>")
                problem = writer.open()
                if problem:
                    await stderr.write(f"{SH}: can't create {target}: {problem}\n".encode())
                    return 1
                fds[redirect.fd] = writer
                files.append(writer)
        cin, cout, cerr = cast(Reader, fds[0]), cast(Writer, fds[1]), cast(Writer, fds[2])
        replace = bool(argv) and argv[0] == "exec" and cmd.group is None
        if replace:  # `exec CMD`: CMD replaces this shell and keeps its pid
            argv = argv[1:]
            pid = self.pid
            if not argv:  # `exec` alone (its redirections are not kept here)
                return 0
        if cmd.group is not None:
            shell = self.child() if cmd.subshell else self
            try:
                status = await shell._script(cmd.group, cin, cout, cerr)
            except ExitShell as done:
                if not cmd.subshell:
                    raise
                status = done.code
        elif not argv:
            self.vars.update(env)
            return 0
        else:
            try:
                status = await self.run_argv(argv, cin, cout, cerr, env, pid=pid)
            finally:
                for writer in files:
                    writer.flush()
        for writer in files:
            writer.flush()
        if replace:
            raise ExitShell(status)
        return status


class FileWriter:
    """`> FILE` / `>> FILE`: written through to the file system as it comes (another shell can `cat` it
    while the command runs), at most every 0.1 s while output streams, and in full at the end."""

    def __init__(self, fs: ShellFS, path: str, *, append: bool) -> None:
        self.fs = fs
        self.path = path
        self.append = append
        self.data = bytearray()
        self._flushed = 0.0
        self._dirty = False
        self._pending: asyncio.TimerHandle | None = None

    def open(self) -> str | None:
        if self.append:
            self.data += self.fs.read(self.path) or b""
        return self.fs.write(self.path, bytes(self.data), 0o100666, int(time.time()))

    async def write(self, data: bytes) -> None:
        self.data += data
        self._dirty = True
        if time.monotonic() - self._flushed > 0.1:
            self.flush()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(0.1, self.flush)

    def flush(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._dirty:
            self._dirty = False
            self._flushed = time.monotonic()
            self.fs.write(self.path, bytes(self.data), 0o100666, int(time.time()))


class _Quiet:
    """A writer whose peer may be gone (background jobs): errors are dropped, as SIGPIPE would."""

    def __init__(self, inner: Writer) -> None:
        self._inner = inner
        self._broken = False

    async def write(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            await self._inner.write(data)
        except (OSError, ConnectionError, asyncio.CancelledError, RuntimeError):
            self._broken = True


# ----------------------------------------------------------------------------------------------
# Generic commands (mksh builtins and toybox applets that need no Android state)


def _mode_string(mode: int) -> str:
    kind = {0o040000: "d", 0o120000: "l", 0o020000: "c"}.get(mode & 0o170000, "-")
    bits = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return kind + bits


async def _echo(p: Proc) -> int:
    args = p.argv[1:]
    newline = True
    escapes = False
    while args and args[0] in ("-n", "-e", "-ne", "-en", "-E"):
        flag = args.pop(0)
        newline = newline and "n" not in flag
        escapes = escapes or "e" in flag
    text = " ".join(args)
    if escapes:
        text = text.encode().decode("unicode_escape")
    await p.out(text + ("\n" if newline else ""))
    return 0


async def _true(p: Proc) -> int:
    return 0


async def _false(p: Proc) -> int:
    return 1


async def _exit(p: Proc) -> int:
    code = p.shell.status
    if len(p.argv) > 1:
        try:
            code = int(p.argv[1]) & 0xFF
        except ValueError:
            await p.err(f"{SH}: exit: {p.argv[1]}: bad number\n")
            code = 1
    raise ExitShell(code)


async def _sleep(p: Proc) -> int:
    if len(p.argv) < 2:
        await p.err("sleep: Need 1 argument\n")
        return 1
    try:
        seconds = sum(float(a.rstrip("s")) for a in p.argv[1:])
    except ValueError:
        await p.err(f"sleep: invalid number '{p.argv[1]}'\n")
        return 1
    await asyncio.sleep(seconds)
    return 0


async def _cd(p: Proc) -> int:
    target = p.shell.abspath(p.argv[1] if len(p.argv) > 1 else "/")
    stat = p.shell.fs.stat(target)
    if stat is None or stat.mode & 0o170000 != 0o040000:
        await p.err(f"{SH}: cd: {target}: No such file or directory\n")
        return 2
    p.shell.cwd = target
    return 0


async def _pwd(p: Proc) -> int:
    await p.out(p.shell.cwd + "\n")
    return 0


async def _export(p: Proc) -> int:
    for arg in p.argv[1:]:
        if "=" in arg:
            key, value = arg.split("=", 1)
            p.shell.vars[key] = value
    return 0


async def _sh(p: Proc) -> int:
    args = p.argv[1:]
    sub = p.shell.child(pid=p.pid)
    sub.vars = dict(p.env)  # `VAR=x sh -c ...`: the new shell sees its environment
    if args and args[0] == "-c":
        if len(args) < 2:
            await p.err(f"{SH}: -c: option requires an argument\n")
            return 1
        return await sub.run(args[1], p.stdin, p.stdout, p.stderr)
    if args:
        data = p.shell.fs.read(p.shell.abspath(args[0]))
        if data is None:
            await p.err(f"{SH}: {args[0]}: No such file or directory\n")
            return 127
        return await sub.run(data.decode(errors="replace"), p.stdin, p.stdout, p.stderr)
    script = (await p.read_all()).decode(errors="replace")
    return await sub.run(script, EmptyReader(), p.stdout, p.stderr)


async def _nohup(p: Proc) -> int:
    return await p.shell.run_argv(p.argv[1:], p.stdin, p.stdout, p.stderr)


async def _timeout(p: Proc) -> int:
    args = p.argv[1:]
    while args and args[0].startswith("-"):
        args = args[2:] if args[0] in ("-s", "-k") else args[1:]
    if len(args) < 2:
        await p.err("timeout: Need 2 arguments\n")
        return 1
    try:
        limit = float(args[0].rstrip("s"))
    except ValueError:
        await p.err(f"timeout: invalid duration '{args[0]}'\n")
        return 1
    try:
        return await asyncio.wait_for(p.shell.run_argv(args[1:], p.stdin, p.stdout, p.stderr), limit)
    except TimeoutError:
        return 124


async def _which(p: Proc) -> int:
    status = 0
    for name in p.argv[1:]:
        path = p.shell.table.path(name)
        if not path:
            status = 1
        else:
            await p.out(path + "\n")
    return status


async def _cat(p: Proc) -> int:
    status = 0
    if len(p.argv) == 1:
        while chunk := await p.stdin.read():
            await p.out(chunk)
        return 0
    for name in p.argv[1:]:
        if name == "-":
            await p.out(await p.read_all())
            continue
        path = p.shell.abspath(name)
        stat = p.shell.fs.stat(path)
        if stat is not None and stat.mode & 0o170000 == 0o040000:
            await p.err(f"cat: {name}: Is a directory\n")
            status = 1
            continue
        data = p.shell.fs.read(path)
        if data is None:
            await p.err(f"cat: {name}: {'Permission denied' if stat else 'No such file or directory'}\n")
            status = 1
            continue
        await p.out(data)
    return status


async def _ls(p: Proc) -> int:
    long = False
    show_all = False
    directory_only = False
    names = []
    for arg in p.argv[1:]:
        if arg.startswith("-") and len(arg) > 1:
            long = long or "l" in arg
            show_all = show_all or "a" in arg
            directory_only = directory_only or "d" in arg
        else:
            names.append(arg)
    status = 0
    lines: list[str] = []

    def entry(name: str, stat: FileStat) -> str:
        if not long:
            return name
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(stat.mtime))
        owner = "root" if stat.mode & 0o170000 == 0o040000 and not name.startswith("tmp") else "shell"
        return f"{_mode_string(stat.mode)} 1 {owner} {owner} {stat.size:>8} {stamp} {name}"

    for name in names or ["."]:
        path = p.shell.abspath(name)
        stat = p.shell.fs.stat(path)
        if stat is None:
            await p.err(f"ls: {name}: No such file or directory\n")
            status = 1
            continue
        if stat.mode & 0o170000 != 0o040000 or directory_only:
            lines.append(entry(name, stat))
            continue
        listing = p.shell.fs.listdir(path)
        if listing is None:
            await p.err(f"ls: {name}: Permission denied\n")
            status = 1
            continue
        if len(names) > 1:
            lines.append(f"{name}:")
        if long:
            lines.append(f"total {sum(s.size for _, s in listing) // 1024}")
        for child, child_stat in sorted(listing):
            if child.startswith(".") and not show_all:
                continue
            lines.append(entry(child, child_stat))
    if lines:
        await p.out("\n".join(lines) + "\n")
    return status


async def _md5sum(p: Proc) -> int:
    status = 0
    for name in p.argv[1:]:
        data = p.shell.fs.read(p.shell.abspath(name))
        if data is None:
            await p.err(f"md5sum: {name}: No such file or directory\n")
            status = 1
            continue
        await p.out(f"{hashlib.md5(data).hexdigest()}  {name}\n")
    if len(p.argv) == 1:
        await p.out(f"{hashlib.md5(await p.read_all()).hexdigest()}  -\n")
    return status


async def _rm(p: Proc) -> int:
    force = any(a.startswith("-") and "f" in a for a in p.argv[1:])
    status = 0
    for name in (a for a in p.argv[1:] if not a.startswith("-")):
        problem = p.shell.fs.remove(p.shell.abspath(name))
        if problem and not (force and "No such file" in problem):
            await p.err(f"rm: {name}: {problem}\n")
            status = 1
    return status


async def _mkdir(p: Proc) -> int:
    parents = "-p" in p.argv
    status = 0
    for name in (a for a in p.argv[1:] if not a.startswith("-")):
        path = p.shell.abspath(name)
        todo = [path]
        if parents:
            todo = []
            while path not in ("/", ""):
                todo.insert(0, path)
                path = posixpath.dirname(path)
        for item in todo:
            if parents and p.shell.fs.stat(item) is not None:
                continue
            problem = p.shell.fs.mkdir(item)
            if problem:
                await p.err(f"mkdir: '{name}': {problem}\n")
                status = 1
                break
    return status


async def _touch(p: Proc) -> int:
    for name in (a for a in p.argv[1:] if not a.startswith("-")):
        path = p.shell.abspath(name)
        problem = p.shell.fs.write(path, p.shell.fs.read(path) or b"", 0o100666, int(time.time()))
        if problem:
            await p.err(f"touch: '{name}': {problem}\n")
            return 1
    return 0


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _bre_to_re(pattern: str) -> str:
    """A POSIX basic regular expression (grep without -E) as a Python one."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(nxt if nxt in "|(){}+?" else "\\" + nxt)
            i += 2
            continue
        out.append("\\" + ch if ch in "|(){}+?" else ch)
        i += 1
    return "".join(out)


async def _grep(p: Proc) -> int:
    args = p.argv[1:]
    flags: set[str] = set()
    patterns: list[str] = []
    files: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "-e" and args:
            patterns.append(args.pop(0))
        elif arg.startswith("-") and len(arg) > 1 and not patterns + files:
            flags.update(arg[1:])
        elif not patterns:
            patterns.append(arg)
        else:
            files.append(arg)
    if not patterns:
        await p.err("grep: No 'PATTERN'\n")
        return 2
    re_flags = re.IGNORECASE if "i" in flags else 0
    if "F" in flags:
        regexes = [re.compile(re.escape(x), re_flags) for x in patterns]
    elif "E" in flags:
        regexes = [re.compile(x, re_flags) for x in patterns]
    else:
        regexes = [re.compile(_bre_to_re(x), re_flags) for x in patterns]
    if "w" in flags:
        regexes = [re.compile(rf"\b(?:{r.pattern})\b", re_flags) for r in regexes]
    sources: list[tuple[str, bytes | None]] = (
        [(f, p.shell.fs.read(p.shell.abspath(f))) for f in files] if files else [("(standard input)", None)]
    )
    found = 0
    status_missing = False
    for name, data in sources:
        if data is None and files:
            await p.err(f"grep: {name}: No such file or directory\n")
            status_missing = True
            continue
        content = data if data is not None else await p.read_all()
        count = 0
        for number, raw in enumerate(_lines(content), start=1):
            line = raw.decode(errors="replace").rstrip("\n")
            hit = any(r.search(line) for r in regexes)
            if hit == ("v" in flags):
                continue
            count += 1
            if "q" in flags:
                return 0
            if "c" in flags:
                continue
            prefix = f"{name}:" if len(files) > 1 else ""
            if "n" in flags:
                prefix += f"{number}:"
            if "o" in flags and "v" not in flags:
                for r in regexes:
                    for m in r.finditer(line):
                        await p.out(prefix + m.group(0) + "\n")
            else:
                await p.out(prefix + line + "\n")
        if "c" in flags:
            await p.out((f"{name}:" if len(files) > 1 else "") + f"{count}\n")
        found += count
    if status_missing:
        return 2
    return 0 if found else 1


def _count_arg(argv: list[str], default: int = 10) -> tuple[int, list[str]]:
    count = default
    rest = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "-n" and args:
            count = int(args.pop(0))
        elif arg.startswith("-n"):
            count = int(arg[2:])
        elif re.fullmatch(r"-\d+", arg):
            count = int(arg[1:])
        else:
            rest.append(arg)
    return count, rest


async def _head(p: Proc) -> int:
    count, files = _count_arg(p.argv[1:])
    data = p.shell.fs.read(p.shell.abspath(files[0])) if files else None
    if files and data is None:
        await p.err(f"head: {files[0]}: No such file or directory\n")
        return 1
    if data is not None:
        await p.out(b"".join(_lines(data)[:count]))
        return 0
    emitted = 0
    pending = b""
    while emitted < count and (chunk := await p.stdin.read()):
        pending += chunk
        while emitted < count and b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            await p.out(line + b"\n")
            emitted += 1
    if emitted < count and pending:
        await p.out(pending)
    return 0


async def _tail(p: Proc) -> int:
    count, files = _count_arg(p.argv[1:])
    data = p.shell.fs.read(p.shell.abspath(files[0])) if files else await p.read_all()
    if data is None:
        await p.err(f"tail: {files[0]}: No such file or directory\n")
        return 1
    await p.out(b"".join(_lines(data)[-count:] if count else []))
    return 0


async def _wc(p: Proc) -> int:
    flags = "".join(a[1:] for a in p.argv[1:] if a.startswith("-"))
    files = [a for a in p.argv[1:] if not a.startswith("-")]
    data = p.shell.fs.read(p.shell.abspath(files[0])) if files else await p.read_all()
    if data is None:
        await p.err(f"wc: {files[0]}: No such file or directory\n")
        return 1
    counts = {"l": data.count(b"\n"), "w": len(data.split()), "c": len(data)}
    shown = [str(counts[f]) for f in "lwc" if f in flags] or [str(counts[f]) for f in "lwc"]
    await p.out(" ".join(shown) + (f" {files[0]}" if files else "") + "\n")
    return 0


async def _env(p: Proc) -> int:
    if len(p.argv) > 1:
        assigns = {}
        args = p.argv[1:]
        while args and "=" in args[0]:
            key, value = args.pop(0).split("=", 1)
            assigns[key] = value
        if args:
            return await p.shell.run_argv(args, p.stdin, p.stdout, p.stderr, assigns)
    for key, value in sorted(p.env.items()):
        await p.out(f"{key}={value}\n")
    return 0


async def _wait(p: Proc) -> int:
    """mksh `wait [PID...]`: the exit status of the last one waited for (127 for a pid not ours)."""
    jobs = p.shell.background
    targets = [int(a) for a in p.argv[1:] if a.isdigit()] or list(jobs)
    status = 0
    for pid in targets:
        task = jobs.pop(pid, None)
        if task is None:
            status = 127
            continue
        try:
            status = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            status = 143
    return status if p.argv[1:] else 0  # POSIX: `wait` without operands exits 0


def _signal_number(text: str) -> int | None:
    name = text.upper().removeprefix("SIG")
    if name.isdigit():
        return int(name) if 0 <= int(name) <= 64 else None
    return SIGNALS.get(name)


async def _kill(p: Proc) -> int:
    """mksh's `kill [-s SIG | -SIG] PID...` and `kill -l`."""
    args = p.argv[1:]
    if args[:1] == ["-l"]:
        await p.out("\n".join(f"{number}) {name}" for name, number in SIGNALS.items()) + "\n")
        return 0
    if args[:1] == ["-s"] and len(args) > 1:
        given, args = args[1], args[2:]
    elif args and args[0].startswith("-") and len(args[0]) > 1 and args[0] != "--":
        given, args = args[0][1:], args[1:]
    else:
        given = "TERM"
    number = _signal_number(given)
    if number is None:
        await p.err(f"{SH}: kill: bad signal '{given}'\n")
        return 1
    sig = number
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        await p.err(f"{SH}: kill: usage: kill [-s signame | -signum | -signame] {{job | pid | pgrp}} ...\n")
        return 1
    status = 0
    for target in args:
        if not target.lstrip("-").isdigit():
            await p.err(f"{SH}: kill: {target}: arguments must be jobs or process IDs\n")
            status = 1
            continue
        problem = p.shell.procs.signal(abs(int(target)), sig, p.shell.uid)
        if problem:
            await p.err(f"{SH}: kill: {target}: {problem}\n")
            status = 1
    return status


async def _command_builtin(p: Proc) -> int:
    """mksh `command [-v|-V] NAME...`: where a command is, or run it bypassing functions."""
    args = p.argv[1:]
    if args[:1] in (["-v"], ["-V"]):
        status = 0
        for name in args[1:]:
            if name in BUILTINS:
                await p.out(name + "\n" if args[0] == "-v" else f"{name} is a shell builtin\n")
                continue
            path = p.shell.table.path(name) if p.shell.table.lookup(name) else None
            if not path:
                status = 1
                if args[0] == "-V":
                    await p.err(f"{name} not found\n")
                continue
            await p.out(path + "\n" if args[0] == "-v" else f"{name} is a tracked alias for {path}\n")
        return status
    return await p.shell.run_argv(args, p.stdin, p.stdout, p.stderr)


async def _type(p: Proc) -> int:
    return await p.shell.run_argv(["command", "-V", *p.argv[1:]], p.stdin, p.stdout, p.stderr)


GENERIC: dict[str, Handler] = {
    "command": _command_builtin,
    "type": _type,
    "echo": _echo,
    "true": _true,
    "false": _false,
    "exit": _exit,
    "sleep": _sleep,
    "cd": _cd,
    "pwd": _pwd,
    "export": _export,
    "sh": _sh,
    "nohup": _nohup,
    "timeout": _timeout,
    "which": _which,
    "cat": _cat,
    "ls": _ls,
    "md5sum": _md5sum,
    "rm": _rm,
    "mkdir": _mkdir,
    "touch": _touch,
    "grep": _grep,
    "head": _head,
    "tail": _tail,
    "wc": _wc,
    "env": _env,
    "kill": _kill,
    "wait": _wait,
}

# mksh builtins (`command -v` names them); those in SHELL_ONLY have no binary in /system/bin.
BUILTINS = frozenset({"echo", "true", "false", "exit", "cd", "pwd", "export", "command", "type", "exec", "kill",
                      "wait"})
SHELL_ONLY = frozenset({"exit", "cd", "export", "command", "type", "exec", "wait"})


def generic_table(extra: Iterable[tuple[str, Handler]] = ()) -> CommandTable:
    """A table with the generic commands, plus `toybox APPLET` dispatch over everything in it."""
    table = CommandTable()
    for name, handler in GENERIC.items():
        table.add(name, handler, "" if name in SHELL_ONLY else f"/system/bin/{name}")
    for name, handler in extra:
        table.add(name, handler)

    async def toybox(p: Proc) -> int:
        if len(p.argv) < 2:
            await p.out(" ".join(n for n in table.names() if n != "toybox" and table.path(n)) + "\n")
            return 0
        applet = p.argv[1]
        if applet in SHELL_ONLY or table.lookup(applet) is None:
            await p.err(f"toybox: Unknown command {applet}\n")
            return 1
        return await p.shell.run_argv(p.argv[1:], p.stdin, p.stdout, p.stderr)

    table.add("toybox", toybox)
    return table


async def drain(reader: Reader) -> None:
    """Read a stream to its end (a command that ignores stdin still lets the writer finish)."""
    with contextlib.suppress(Exception):
        while await reader.read():
            pass
