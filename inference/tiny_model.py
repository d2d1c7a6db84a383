"""``seekwatch make-tiny-model DIR``: a random-weight model with DeepSeek-LLM's architecture.

No model hub is reachable from CI or the demo, yet the node must load its model through the
ordinary ``from_pretrained`` path so that real DeepSeek weights in a local folder load the
same way. This writes such a folder: a Llama-layout config (the layout DeepSeek-LLM-7B uses,
shrunk to a few layers and a small hidden size), random weights in safetensors, and a real
byte-level BPE tokenizer trained here with the ``tokenizers`` library on a small bundled
Chinese and English corpus, with DeepSeek-LLM-chat's special tokens and chat template.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"

#: DeepSeek-LLM-7B-chat's template: "User: ...\n\nAssistant: ...<eos>", system text first.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: DeepSeek-LLM-7B: 30 layers, hidden 4096, intermediate 11008, 32 heads, vocab 102400,
#: context 4096. The tiny default keeps the shape family, shrunk.
TINY = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=4096)
DEEPSEEK_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                   num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


def train_tokenizer(vocab_size: int = 4096):
    """Train a byte-level BPE tokenizer on the bundled corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = (Path(__file__).parent / "data" / "tiny_corpus.txt").read_text("utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    lines = [line for line in corpus.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, size: str = "tiny",
                    vocab_size: int = 4096, device: str = "cpu") -> Path:
    """Write config, random weights and tokenizer to ``out_dir``; return the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    shape = TINY if size == "tiny" else DEEPSEEK_7B
    if size != "tiny":
        # DeepSeek-LLM's vocabulary is 102,400. Pad the locally trained tokenizer with
        # visible placeholder tokens so every id the random model samples decodes to text
        # (an id past the vocabulary would decode to nothing and hide the stream's tokens).
        tokenizer.add_tokens([f"<t{i}>" for i in range(len(tokenizer), 102400)])
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        torch_dtype="float32" if size == "tiny" else "bfloat16", **shape,
    )
    torch.manual_seed(seed)
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialising 7B random weights is minutes on a CPU, seconds on a GPU
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, top_p=0.95,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "seekwatch-model.json").write_text(json.dumps(
        {"generated_by": "seekwatch make-tiny-model", "seed": seed, "size": size,
         "weights": "random", "note": "not a trained model: output text is random"}, indent=2))
    return out


def add_parser(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=__doc__.splitlines()[0])
    p.add_argument("dir", metavar="DIR", help="folder to write the model into")
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    p.add_argument("--size", choices=["tiny", "deepseek-7b"], default="tiny",
                   help="tiny (default, for CPU) or the full DeepSeek-LLM-7B shape with random bf16 weights")
    p.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is much faster for deepseek-7b)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    out = make_tiny_model(args.dir, seed=args.seed, size=args.size, device=args.device)
    print(f"wrote {args.size} model to {out}")
    return 0
