#!/usr/bin/env python3
"""Golden fixtures for common/text/tokenizer: small tokenizer.json files of the three families the
project serves, trained with Hugging Face `tokenizers`, and the ids `tokenizers` gives for a fixed
list of strings. tests/text/tokenizer_golden_test.cpp checks the C++ tokenizer against them.

    python3 scripts/make_tokenizer_fixtures.py tests/data/tokenizers    # needs only `tokenizers`

Writes, under the folder given:
  opt-style/tokenizer.json              GPT-2 byte-level BPE as OPT: ByteLevel pre-tokenizer (the
                                        GPT-2 regex), <s> <pad> </s> <unk> = 0..3, `</s>` as BOS
                                        through TemplateProcessing
  llama3-style/tokenizer.json           Split (the Llama 3 regex) + ByteLevel(use_regex=False),
                                        ignore_merges, <|begin_of_text|> BOS, <|eot_id|> and header
                                        specials after the vocabulary, one non-special added token
  llama2-style/tokenizer.json           SentencePiece-style BPE: Prepend("▁") + Replace(" ", "▁")
                                        normalizer, byte_fallback with all 256 <0xNN> tokens,
                                        <unk> <s> </s>, the Replace/ByteFallback/Fuse/Strip decoder
  llama2-metaspace-style/tokenizer.json the same vocabulary with the newer Metaspace pre-tokenizer
                                        (prepend_scheme "first", split false) and no normalizer
  goldens.json                          {"tokenizers_version", "files": {folder: [case, ...]}}; a case
                                        is {text, ids, ids_no_special, ids_split_special, decoded,
                                        decoded_with_special}: ids with add_special_tokens true and
                                        false, ids with special tokens in the text not parsed
                                        (encode_special_tokens), decode(ids) skipping special tokens
                                        and keeping them

The corpus is the repository's *.md files (sorted) plus the strings below, so the output is the
same on every run over the same checkout. Rerun it and commit the folder when the docs or the
tokenizer change.
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Mixed into the corpus so that the vocabularies hold some non-ASCII pieces and digits.
EXTRA_CORPUS = [
    "The quick brown fox jumps over the lazy dog. I'll've been there; you're right, it's fine.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1234 2048 65536 3.14159 1,000,000 2026-12-01",
    "Привет, мир! Как дела? Это тест токенизатора.",
    "こんにちは世界。今日はいい天気ですね。",
    "中文分词测试，模型服务器。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "Ελληνικά γράμματα αβγδε",
    "Café naïve résumé façade jalapeño über straße",
    "Emoji: 😀 😃 😄 👍 👍🏽 🎉 🚀 👨‍👩‍👧‍👦 🇺🇸",
    "def main():\n    return {\"key\": [1, 2, 3]}\n",
    "    indented code\n\ttabbed line\n\n\nthree newlines\r\nwindows line",
] * 20

# The strings the goldens cover: edge cases of each pre-tokenizer, merges, byte fallback and
# added tokens.
GOLDEN_TEXTS = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t",
    "\t\tindented",
    "\r\n",
    "a\r\nb",
    "Hello world",
    " Hello world",
    "Hello  world",
    "Hello world ",
    "hello\n\nworld",
    "  leading spaces and trailing  ",
    "1234567",
    "3.14159",
    "1,000,000 and 2026-12-01",
    "I'll've",
    "don't DON'T Don'T",
    "she'S it'ſ we'LL",
    "'s 're",
    "The quick brown fox jumps over the lazy dog.",
    "Привет мир",
    "こんにちは世界",
    "中文测试",
    "안녕하세요",
    "مرحبا بالعالم",
    "Ελληνικά",
    "हिन्दी",
    "😀",
    "👨‍👩‍👧‍👦 family",
    "🇺🇸🇫🇷",
    "👍🏽",
    "e\u0301 n\u0303 a\u0308",
    "Café naïve",
    "Å ﬁ ǅ",
    "\u00a0nbsp\u00a0",
    "ideographic\u3000space",
    "zero\u200bwidth",
    "a\u0000b\u0001c\u007f",
    "<|eot_id|>",
    "<s>",
    "</s>",
    "<unk>",
    "<|begin_of_text|>hi",
    "hello<|eot_id|>world",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "<s>[INST] hello [/INST]",
    " </s> spaced </s> ",
    "<tool_call>{\"a\": 1}</tool_call>",
    "def f(x):\n    return x**2\n",
    "#include <vector>\nint main() { return 0; }",
    "https://example.com/path?q=1&r=2",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "x" * 300,
    "mixed English и русский and 日本語 together",
    "!!! ??? ... ---",
    "tabs\tand\tspaces \t mixed",
]


def corpus():
    texts = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.startswith("build"))
        for name in sorted(filenames):
            if name.endswith(".md"):
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                    texts.extend(line for line in f.read().split("\n\n") if line.strip())
    return texts + EXTRA_CORPUS


def reload(tokenizer, edit=None):
    """The tokenizer as its JSON gives it (after `edit` changes the JSON), so that the file written
    and the goldens computed come from the same object."""
    data = json.loads(tokenizer.to_str())
    if edit:
        edit(data)
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def opt_style(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id("</s>") == 2
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", 2)])
    return reload(tok)


def llama3_style(texts):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # As in Llama 3, the special tokens come after the vocabulary.
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"])
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=True),
                    AddedToken("</tool_call>", special=False, normalized=False)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])

    def edit(data):
        data["model"]["ignore_merges"] = True  # in case training rebuilt the model without it

    return reload(tok, edit)


def llama2_style(texts, metaspace):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Trained on ▁-prefixed words; used, as Llama 2 is, on the whole normalized text.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=120)
    tok.train_from_iterator(texts, trainer=trainer)

    def edit(data):
        # All 256 byte tokens as ordinary vocabulary right after the specials (ids 3..258), as in
        # Llama 2; the trained pieces after them.
        old = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
        vocab = {}
        for token, _ in old[:3]:
            vocab[token] = len(vocab)
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for token, _ in old[3:]:
            if token not in vocab:
                vocab[token] = len(vocab)
        data["model"]["vocab"] = vocab
        data["model"]["byte_fallback"] = True
        data["model"]["fuse_unk"] = True
        data["model"]["unk_token"] = "<unk>"
        for added in data["added_tokens"]:
            added["id"] = vocab[added["content"]]
        data["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]}
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab["<s>"]], "tokens": ["<s>"]}},
        }
        if metaspace:
            data["normalizer"] = None
            data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                                     "split": False}
        else:
            data["normalizer"] = {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ]}
            data["pre_tokenizer"] = None

    return reload(tok, edit)


def goldens(tok):
    cases = []
    for text in GOLDEN_TEXTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        ids_no_special = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_split_special = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = False
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": ids_no_special,
            "ids_split_special": ids_split_special,
            "decoded": tok.decode(ids, skip_special_tokens=True),
            "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
        })
    return cases


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_tokenizer_fixtures.py OUTPUT_FOLDER")
    out = sys.argv[1]
    import tokenizers
    texts = corpus()
    built = {
        "opt-style": opt_style(texts),
        "llama3-style": llama3_style(texts),
        "llama2-style": llama2_style(texts, metaspace=False),
        "llama2-metaspace-style": llama2_style(texts, metaspace=True),
    }
    files = {}
    for name, tok in built.items():
        write(os.path.join(out, name, "tokenizer.json"), tok.to_str(pretty=True) + "\n")
        files[name] = goldens(tok)
    write(os.path.join(out, "goldens.json"),
          json.dumps({"tokenizers_version": tokenizers.__version__, "files": files}, ensure_ascii=False, indent=1)
          + "\n")
    for name in built:
        print(f"{name}: vocabulary {built[name].get_vocab_size()}, {len(files[name])} cases")


if __name__ == "__main__":
    main()
