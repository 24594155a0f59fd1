"""SQLAlchemy 2 ORM schema of the result store. Changes go through Alembic migrations
(``results/migrations``); ``tests/test_store.py`` checks the migration matches this module."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class DatasetRow(Base):
    """A dataset split as used: name plus the sha256 of its bytes."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    n_train: Mapped[int]
    n_test: Mapped[int]
    description: Mapped[dict[str, Any]]


class TrainingRun(Base):
    """One training job, keyed by the hash of everything that determines its result."""

    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))  # "defense" or "surrogate"
    defense: Mapped[str] = mapped_column(String(64))
    hparams: Mapped[dict[str, Any]]
    arch: Mapped[str] = mapped_column(String(64))
    arch_params: Mapped[dict[str, Any]]
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    seed: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # running / finished / failed
    error: Mapped[Optional[str]] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    total_seconds: Mapped[Optional[float]]
    environment: Mapped[dict[str, Any]]
    #: The suite entry (label without seed or sweep suffix) and the swept knob values; 0003.
    entry: Mapped[Optional[str]] = mapped_column(String(128))
    sweep: Mapped[Optional[dict[str, Any]]]
    epochs: Mapped[list["EpochRow"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                    order_by="EpochRow.epoch")


class EpochRow(Base):
    """Per-epoch training record: loss, accuracies, seconds and passes."""

    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    loss: Mapped[float]
    train_accuracy: Mapped[float]
    train_adv_accuracy: Mapped[Optional[float]]
    test_accuracy: Mapped[Optional[float]]
    seconds: Mapped[float]
    forward_passes: Mapped[int]
    backward_passes: Mapped[int]
    #: Defense-specific statistics (robust estimates, early-stop decisions); migration 0002.
    extra: Mapped[Optional[dict[str, Any]]]
    run: Mapped[TrainingRun] = relationship(back_populates="epochs")


class CheckpointRow(Base):
    """A checkpoint file set, identified by the sha256 of its weights."""

    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[Optional[int]] = mapped_column(ForeignKey("training_runs.id"), index=True)
    epoch: Mapped[int]
    final: Mapped[bool] = mapped_column(Boolean)
    path: Mapped[str] = mapped_column(Text)
    arch: Mapped[str] = mapped_column(String(64))
    defense: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]]


class Evaluation(Base):
    """One checkpoint attacked under one protocol on one eval subset; written in one transaction."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    protocol: Mapped[str] = mapped_column(String(64))
    protocol_version: Mapped[int]
    protocol_hash: Mapped[str] = mapped_column(String(64))
    subset_hash: Mapped[str] = mapped_column(String(64))
    n_examples: Mapped[int]
    benign_accuracy: Mapped[float]
    seconds: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(DateTime)
    environment: Mapped[dict[str, Any]]
    #: The protocol as evaluated (so audits can re-run it without the file); migration 0004.
    protocol_spec: Mapped[Optional[dict[str, Any]]]
    #: The adversarial-example gallery (``bench.evaluate.write_gallery``): a content-addressed
    #: file under the work directory, its sha256, and the eval-subset images it shows; 0007.
    gallery: Mapped[Optional[dict[str, Any]]]
    attacks: Mapped[list["AttackRow"]] = relationship(back_populates="evaluation",
                                                      cascade="all, delete-orphan")


class AttackRow(Base):
    """Aggregate of one attack within an evaluation."""

    __tablename__ = "attack_results"
    __table_args__ = (UniqueConstraint("evaluation_id", "attack_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"),
                                               index=True)
    attack_id: Mapped[str] = mapped_column(String(64))      # the protocol's name for it
    attack: Mapped[str] = mapped_column(String(64))         # registry name
    attack_key: Mapped[str] = mapped_column(String(64))     # hash of the full config
    config: Mapped[dict[str, Any]]
    threat: Mapped[str] = mapped_column(String(16))         # white-box / black-box
    norm: Mapped[Optional[str]] = mapped_column(String(8))
    eps: Mapped[Optional[float]]
    source_checkpoint_id: Mapped[Optional[int]] = mapped_column(ForeignKey("checkpoints.id"))
    n_examples: Mapped[int]
    robust_accuracy: Mapped[float]
    success_rate: Mapped[float]  # on points classified correctly when clean
    mean_l2: Mapped[Optional[float]]
    median_l2: Mapped[Optional[float]]
    forward_passes: Mapped[int]
    backward_passes: Mapped[int]
    seconds: Mapped[float]
    #: The protocol attack id whose eps grid this row belongs to (None: a protocol attack); 0003.
    grid_of: Mapped[Optional[str]] = mapped_column(String(64))
    #: Indicators of attack failure (``bench.indicators``): name -> value, points, fired; 0008.
    indicators: Mapped[Optional[dict[str, Any]]]
    evaluation: Mapped[Evaluation] = relationship(back_populates="attacks")


class ExampleRow(Base):
    """Per-example outcome of one attack: the row every metric and curve is recomputed from."""

    __tablename__ = "example_results"
    __table_args__ = (UniqueConstraint("attack_result_id", "example_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    attack_result_id: Mapped[int] = mapped_column(ForeignKey("attack_results.id", ondelete="CASCADE"),
                                                  index=True)
    example_index: Mapped[int]    # index into the dataset's test split
    label: Mapped[int]
    clean_correct: Mapped[bool] = mapped_column(Boolean)
    adv_correct: Mapped[bool] = mapped_column(Boolean)  # robust: correct clean and under attack
    success: Mapped[bool] = mapped_column(Boolean)
    l2: Mapped[float] = mapped_column(Float)
    linf: Mapped[float] = mapped_column(Float)
    pred: Mapped[int] = mapped_column(Integer)
    #: Iterative attacks (one restart): the iteration of the first fooling iterate (0: the
    #: start point), None when not fooled or not recorded; 0003.
    success_step: Mapped[Optional[int]] = mapped_column(Integer)
    #: ||x||_2 of the clean image (rho_2 = l2 / x_l2, seed 002 eq. 7); 0003.
    x_l2: Mapped[Optional[float]] = mapped_column(Float)


class AuditRow(Base):
    """One audit of a checkpoint (``bench.audit``): per-item verdicts, masking flags, environment diff."""

    __tablename__ = "audits"
    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[Optional[int]] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    evaluation_id: Mapped[Optional[int]] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))      # reproduce / retrain
    verdict: Mapped[str] = mapped_column(String(16))   # reproduced / differs / cannot check
    items: Mapped[list[Any]] = mapped_column(JSON)
    flags: Mapped[list[Any]] = mapped_column(JSON)
    environment_diff: Mapped[dict[str, Any]]
    environment: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ReferenceRow(Base):
    """A result reported elsewhere (a RobustBench model_info file), shown beside our evaluations
    and marked "reported, not re-evaluated"; ``info`` keeps the file's fields as given."""

    __tablename__ = "reference_results"
    __table_args__ = (UniqueConstraint("name", "dataset", "threat_model", "eps", name="uq_reference_entry"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    dataset: Mapped[str] = mapped_column(String(64))
    threat_model: Mapped[str] = mapped_column(String(32))     # Linf / L2 / corruptions
    eps: Mapped[Optional[str]] = mapped_column(String(32))      # as written, e.g. "8/255"
    clean_accuracy: Mapped[float] = mapped_column(Float)         # fractions
    robust_accuracy: Mapped[Optional[float]] = mapped_column(Float)
    architecture: Mapped[Optional[str]] = mapped_column(String(128))
    additional_data: Mapped[Optional[bool]] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(Text)
    info: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime)


class JobClaim(Base):
    """A job being run right now, claimed by its content key (``bench.claims``): two workers never
    run the same training or evaluation job, and a claim whose owner died is taken over. The row
    is deleted when the job ends; its results live in ``training_runs`` / ``evaluations``."""

    __tablename__ = "job_claims"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))      # train / evaluate
    label: Mapped[str] = mapped_column(String(256))
    owner: Mapped[str] = mapped_column(String(256))    # host:pid:token
    claimed_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)
