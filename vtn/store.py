"""The VTN's persistent store: VENs, events and their intervals, deliveries, opt responses, reports.

The store *is* the event queue. openleadr keeps its queues in memory and loses them on restart;
the Cariflex VTN answers every poll from here instead (see vtn.server), so whatever the store
has committed survives a crash, and an operator command written by another process (the CLI)
reaches the VENs without any hand-over.

Every operator write increments ``meta.generation`` in the same transaction; the VTN compares
it on each poll to know when to reload its cache.

SQLite (default, a file under var/) runs in WAL mode with a busy timeout, so the VTN and the
operator CLI can write at the same time; PostgreSQL is selected with CARIFLEX_VTN_DATABASE_URL.

Indices the poll path and the admin API read by are declared on the tables and created at start
when missing (``CREATE INDEX IF NOT EXISTS``), so a store made by an older VTN gets them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given to the VTN store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Ven(Base):
    """A VEN the operator provisioned; only these may register."""

    __tablename__ = "vtn_ven"
    id: Mapped[int] = mapped_column(primary_key=True)
    ven_name: Mapped[str] = mapped_column(String(100), unique=True)
    ven_id: Mapped[str] = mapped_column(String(100), unique=True)
    fingerprint: Mapped[str | None] = mapped_column(String(100))
    registration_id: Mapped[str | None] = mapped_column(String(100))
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The site's normal import capacity, as contracted: a load-control level (a fraction of it)
    # becomes a cap in kW the console draws against the fleet power the VEN reports.
    capacity_kw: Mapped[float | None] = mapped_column(Float)


class Event(Base):
    """One OpenADR event with one signal; ``intervals`` are those of its current modification."""

    __tablename__ = "vtn_event"
    # The poll path's reload reads the events that may still be live, by start (StoreView.refresh),
    # and the admin API lists them in start order.
    __table_args__ = (Index("ix_vtn_event_start", "start"),)
    event_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # "price" | "load_control"
    signal_name: Mapped[str] = mapped_column(String(40))
    signal_type: Mapped[str] = mapped_column(String(40))
    measurement: Mapped[dict | None] = mapped_column(JSON)  # itemBase, e.g. currencyPerKWh / EUR
    unit: Mapped[str | None] = mapped_column(String(20))  # what the operator entered, e.g. "EUR/MWh"
    market_context: Mapped[str] = mapped_column(String(200))
    modification_number: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[bool] = mapped_column(default=False)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_s: Mapped[int] = mapped_column(Integer)
    ramp_up_s: Mapped[int | None] = mapped_column(Integer)
    notification_s: Mapped[int | None] = mapped_column(Integer)
    recovery_s: Mapped[int | None] = mapped_column(Integer)
    resource_targets: Mapped[list | None] = mapped_column(JSON)  # resource ids, None = whole VEN
    ven_names: Mapped[list | None] = mapped_column(JSON)  # None = every VEN, now and later
    response_required: Mapped[str] = mapped_column(String(10), default="always")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(40), default="operator")  # or "day-ahead"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    intervals: Mapped[list[Interval]] = relationship(
        back_populates="event", order_by="Interval.uid", cascade="all, delete-orphan", lazy="selectin"
    )


class Interval(Base):
    __tablename__ = "vtn_interval"
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("vtn_event.event_id", ondelete="CASCADE"), index=True)
    uid: Mapped[int] = mapped_column(Integer)
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_s: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    event: Mapped[Event] = relationship(back_populates="intervals")


class EventHistory(Base):
    """Audit trail: every create, modify and cancel with a snapshot of what was sent."""

    __tablename__ = "vtn_event_history"
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(100), index=True)
    modification_number: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    snapshot: Mapped[dict] = mapped_column(JSON)


class Delivery(Base):
    """What each VEN last received of each event, to know when to distribute again."""

    __tablename__ = "vtn_delivery"
    ven_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    modification_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OptResponse(Base):
    """A VEN's optIn/optOut, kept per modification of the event."""

    __tablename__ = "vtn_opt"
    __table_args__ = (UniqueConstraint("ven_id", "event_id", "modification_number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ven_id: Mapped[str] = mapped_column(String(100), index=True)
    event_id: Mapped[str] = mapped_column(String(100), index=True)
    modification_number: Mapped[int] = mapped_column(Integer)
    opt_type: Mapped[str] = mapped_column(String(10))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReportRegistration(Base):
    __tablename__ = "vtn_report_registration"
    id: Mapped[int] = mapped_column(primary_key=True)
    ven_id: Mapped[str] = mapped_column(String(100), index=True)
    report_specifier_id: Mapped[str] = mapped_column(String(100))
    r_id: Mapped[str] = mapped_column(String(100))
    description: Mapped[dict] = mapped_column(JSON)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReportValue(Base):
    __tablename__ = "vtn_report_value"
    # Fleet power before/during a load control event reads a time range (actions.fleet_power).
    __table_args__ = (Index("ix_vtn_report_value_at", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ven_id: Mapped[str] = mapped_column(String(100), index=True)
    r_id: Mapped[str | None] = mapped_column(String(100))
    report_request_id: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    value: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Operator(Base):
    """A person who may use the console; the password only as a salted scrypt hash (vtn.operators)."""

    __tablename__ = "vtn_operator"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OperatorSession(Base):
    """A console login. The cookie holds a random token; the store only its SHA-256, so a copy of the
    store logs nobody in. ``csrf_token`` is the synchroniser token every form of the session posts."""

    __tablename__ = "vtn_operator_session"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator: Mapped[str] = mapped_column(String(100), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OperatorAction(Base):
    """Who did what in the console, refused attempts included (failed logins: the name tried)."""

    __tablename__ = "vtn_operator_action"
    __table_args__ = (Index("ix_vtn_operator_action_target", "target"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    operator: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(10))  # "done" | "refused"
    detail: Mapped[str | None] = mapped_column(String(400))


class Meta(Base):
    __tablename__ = "vtn_meta"
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """Sessions on the event store, and the generation counter that signals operator changes."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        self._create_missing_indices()
        with self.session() as s:
            if s.get(Meta, "generation") is None:
                s.add(Meta(key="generation", value=0))

    def _add_missing_columns(self) -> None:
        """create_all makes only new tables: a store from an older VTN gets the (nullable) columns
        added since, e.g. ``vtn_ven.capacity_kw``."""
        existing = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    with self.engine.begin() as conn:
                        conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))

    def _create_missing_indices(self) -> None:
        """create_all makes indices only with new tables: a store from an older VTN gets the indices
        added since here (idempotent on SQLite and PostgreSQL)."""
        for table in Base.metadata.sorted_tables:
            for index in table.indexes:
                index.create(self.engine, checkfirst=True)

    def record_polls(self, polls: dict[str, datetime]) -> None:
        """When each VEN last polled, in one statement (executemany) and one transaction."""
        if not polls:
            return
        with self.session() as session:
            session.connection().execute(
                update(Ven.__table__)
                .where(Ven.__table__.c.ven_id == bindparam("b_ven_id"))
                .values(last_poll_at=bindparam("b_at")),
                [{"b_ven_id": ven_id, "b_at": at} for ven_id, at in polls.items()],
            )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back (nothing written) on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A transaction for an operator change. Its first statement increments the generation: on
        SQLite that takes the write lock before anything is read, on PostgreSQL a row lock, so two
        concurrent changes to one event run one after the other instead of losing one."""
        with self.session() as session:
            self.bump_generation(session)
            yield session

    @staticmethod
    def bump_generation(session: Session) -> None:
        session.execute(update(Meta).where(Meta.key == "generation").values(value=Meta.value + 1))

    def generation(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(Meta.value).where(Meta.key == "generation")).scalar_one()

    def dispose(self) -> None:
        self.engine.dispose()


def default_url() -> str:
    from cariflex import settings

    return settings.get("CARIFLEX_VTN_DATABASE_URL") or f"sqlite:///{settings.var_dir() / 'vtn.sqlite'}"
