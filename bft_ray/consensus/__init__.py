"""Pure HotStuff consensus core (no Ray, no clocks, no I/O).

See ``docs/consensus.md`` for the protocol, the safety argument and the API.

Example:
    >>> from bft_ray.consensus import Node, NodeConfig, sim_crypto
    >>> vs, signers, verifier = sim_crypto(4)
    >>> Node(NodeConfig(0, vs), signers[0], verifier).round
    1
"""

from .app import Application, NullApplication
from .blocktree import (
    BlockTree,
    CommittedBlock,
    three_chain_commit,
    two_chain_commit,
    verify_commit_proof,
)
from .config import CommitRule, NodeConfig, SeededBugs
from .crypto import (
    CertificateVerifier,
    Ed25519Signer,
    Ed25519Verifier,
    SignatureVerifier,
    Signer,
    SimSigner,
    SimVerifier,
    ValidatorSet,
    ed25519_crypto,
    sim_crypto,
)
from .errors import (
    ConsensusConfigError,
    ConsensusError,
    DecodeError,
    SafetyViolationError,
    UnsafeActionError,
)
from .leader import FixedSchedule, LeaderElection, RoundRobin
from .node import Node, NodeStats, Outgoing, Ready, Status
from .pacemaker import Pacemaker
from .safety import SafetyData, SafetyRules, decode_safety_data
from .storage import MemoryStore, RecoveryState
from .types import (
    GENESIS_QC,
    Block,
    BlockRequest,
    BlockResponse,
    Message,
    Proposal,
    QuorumCert,
    Timeout,
    TimeoutCert,
    Vote,
    VoteData,
    decode_block,
    decode_message,
    decode_qc,
    decode_tc,
    genesis_block,
)

__all__ = [
    "GENESIS_QC",
    "Application",
    "Block",
    "BlockRequest",
    "BlockResponse",
    "BlockTree",
    "CertificateVerifier",
    "CommitRule",
    "CommittedBlock",
    "ConsensusConfigError",
    "ConsensusError",
    "DecodeError",
    "Ed25519Signer",
    "Ed25519Verifier",
    "FixedSchedule",
    "LeaderElection",
    "MemoryStore",
    "Message",
    "Node",
    "NodeConfig",
    "NodeStats",
    "NullApplication",
    "Outgoing",
    "Pacemaker",
    "Proposal",
    "QuorumCert",
    "Ready",
    "RecoveryState",
    "RoundRobin",
    "SafetyData",
    "SafetyRules",
    "SafetyViolationError",
    "SeededBugs",
    "SignatureVerifier",
    "Signer",
    "SimSigner",
    "SimVerifier",
    "Status",
    "Timeout",
    "TimeoutCert",
    "UnsafeActionError",
    "ValidatorSet",
    "Vote",
    "VoteData",
    "decode_block",
    "decode_message",
    "decode_qc",
    "decode_safety_data",
    "decode_tc",
    "ed25519_crypto",
    "genesis_block",
    "sim_crypto",
    "three_chain_commit",
    "two_chain_commit",
    "verify_commit_proof",
]
