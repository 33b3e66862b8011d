"""onnxprune: structured channel pruning and low-rank decomposition of ONNX models, proven with onnxruntime."""
from onnxprune.workflows.bench import BenchComparison, BenchResult, bench
from onnxprune.blocks import Block, BlockResult, find_blocks, prune_blocks
from onnxprune.coupling import Analysis, ChannelGroup, Layer, analyze
from onnxprune.criteria import register_criterion
from onnxprune.datasources import HFDataset, ImageFolder, Preprocess
from onnxprune.workflows.evaluate import evaluate
from onnxprune.errors import (
    BudgetOutOfReachError,
    ExecutorError,
    ExternalDataError,
    InvalidDataError,
    InvalidModelError,
    InvalidRequestError,
    OnnxPruneError,
    OnnxRuntimeError,
    TaskError,
    UnsupportedError,
    VerificationError,
)
from onnxprune.ir import load_model, save_model
from onnxprune.workflows.iterative import IterativeResult, iterative_prune
from onnxprune.options import Options
from onnxprune.plan import Plan
from onnxprune.profile import CostModel, LatencyCostModel, load_cost, profile
from onnxprune.reconstruction import Compensation, Reconstruction, verify_compensation
from onnxprune.pruning import PruneResult, apply_plan, make_plan, prune, prune_by_index, prune_with_plan
from onnxprune.workflows.sensitivity import Recommendation, SensitivityResult, sensitivity
from onnxprune.stats import stats
from onnxprune.verify import verify, verify_blocks, verify_pruning
from onnxprune.decomposition import DecompositionResult, decomposable_layers, decompose, verify_decomposition
from onnxprune.sparsity import (
    GlobalImportance,
    LayerImportance,
    LayerStrategy,
    ModelStrategy,
    SparsifyResult,
    SparsityReport,
    Strategy,
    register_strategy,
    sparsify,
)


__all__ = [
    "Block", "BlockResult", "find_blocks", "prune_blocks", "verify_blocks",
    "Analysis", "BenchComparison", "BenchResult", "ChannelGroup", "DecompositionResult", "Layer", "Options", "Plan",
    "PruneResult", "Compensation", "Reconstruction", "analyze", "bench", "evaluate", "apply_plan", "decomposable_layers", "decompose", "load_model", "make_plan", "prune",
    "prune_by_index", "prune_with_plan", "register_criterion", "save_model", "stats", "verify", "verify_compensation",
    "verify_decomposition", "verify_pruning",
    "GlobalImportance", "LayerImportance", "LayerStrategy", "ModelStrategy", "SparsifyResult", "SparsityReport",
    "Strategy", "register_strategy", "sparsify",
    "OnnxPruneError", "OnnxRuntimeError", "InvalidModelError", "InvalidRequestError", "ExternalDataError", "UnsupportedError",
    "BudgetOutOfReachError", "ExecutorError", "TaskError",
    "VerificationError",
    "IterativeResult", "Recommendation", "SensitivityResult", "iterative_prune", "sensitivity",
    "CostModel", "LatencyCostModel", "load_cost", "profile",
    "HFDataset", "ImageFolder", "InvalidDataError", "Preprocess",
]
