"""Deterministic synthetic chat corpora for benchmarks, tests and the shipped sample data.

Everything here is seeded word salad: large word lists (English-like words and their derived forms, tens of
thousands of made-up words, French/German/Spanish/Russian/Arabic/Hebrew/Chinese/Japanese vocabularies,
identifiers, numbers, URLs, emoji, math) arranged into Markdown prose, lists, tables and fenced code, with
lengths drawn to mimic public chat data measured in tokens of a Llama/Mistral tokenizer. The same seed always
gives the same frame (no use of ``hash()``, sets or global random state). Pure Python + polars.
"""
from __future__ import annotations

import functools
import math
import random

import polars as pl

__all__ = ["conversations", "preference_pairs", "prompt_completion", "texts", "messy_conversations", "MESSAGES"]

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})
MESSAGES = pl.List(MESSAGE)

_EN = """the of and to in is that for it as with was on be by this are or from at which have an not but they has were
their more can one all also been its other there new when some into time only these may would two first most such than over
use should people then made after between about many each them used well both however because through must where even while
like work how could any very under our system data model set case example number way part point result value state group level
form order process change since problem question information method function user code file type list error line test class
string table query server request response memory training token input output layer batch loss step learning rate network
version package module library support feature issue build run install update return call create read write open close load
save start stop check find help make take give show know think want need look try keep follow include provide allow require
consider describe explain improve increase reduce handle manage define compute convert generate parse format apply select
filter sort merge split join count match replace remove insert append extend store fetch send receive connect analyze design
implement deploy configure optimize evaluate measure compare important different possible simple common available specific
general large small good great high low long short early late recent current main final similar various public private local
global random single multiple real complex quick slow easy hard clear strong weak history science health music travel garden
kitchen recipe market economy climate energy water city river mountain ocean forest animal plant child family friend teacher
student doctor patient company customer product price budget strategy policy government law culture language story book film
art game sport team player season weather morning evening week month year today tomorrow country region island village street
house room window door chair computer phone camera screen picture color light sound voice paper letter word sentence essay
poem song dance museum travel hotel flight ticket bread cheese coffee tea sugar salt apple orange river bridge engine vehicle
battery solar wind planet star galaxy atom cell gene protein virus vaccine brain heart blood muscle exercise sleep dream idea
theory evidence argument reason answer summary context detail factor effect impact benefit risk cost profit revenue growth""".split()
_TECH = """tensor gradient optimizer kubernetes docker postgres redis numpy pandas polars pytorch transformer attention embedding
tokenizer dataset dataframe schema parquet json yaml regex lambda closure iterator generator coroutine async await mutex thread
kernel cuda latency throughput endpoint webhook oauth cookie session cache index shard replica cluster pipeline checkpoint
logits softmax sigmoid relu dropout epoch scheduler warmup microservice frontend backend react typescript javascript rust golang
compiler linker binary bytecode runtime allocator pointer struct enum trait interface namespace decorator middleware""".split()
_LANG_WORDS = {
    "fr": """le la les des une est pour avec dans sur pas plus très être avoir fait comme mais où été déjà même après données
modèle système problème réponse première deuxième élève café hôpital forêt fenêtre théâtre naïf noël garçon leçon façon reçu
voilà ça déçu août cœur sœur œuvre à côté bientôt peut-être aujourd'hui qu'il c'est n'est l'équipe""",
    "de": """der die das und ist nicht mit für auf über größer Straße Mädchen schön Fähigkeit Prüfung Lösung Aufgabe Beispiel
Datenbank Schlüssel müssen können würde wäre Grüße Übersicht Fußball Bäcker Häuser Größe Zuverlässigkeit außerdem
natürlich Öffnungszeiten Geschwindigkeitsbegrenzung""",
    "es": """el la los las que por para con está niño año mañana canción información también según además pregunta respuesta
ejemplo sistema señor corazón árbol más así aquí jamás pingüino vergüenza después número último rápido ¿cómo? ¡hola!""",
    "ru": """и в не на что это как для по мы вы они данные модель система вопрос ответ пример привет спасибо хорошо можно
нужно время работа человек который также после между очень большой новый Москва ещё объём""",
    "ar": """في من على إلى هذا هذه التي الذي مع كان عن بين كل البيانات النموذج النظام سؤال جواب مثال شكرا مرحبا العربية اللغة
الكتاب المدرسة الحاسوب البرمجة""",
    "he": """של את על זה עם הוא היא לא כל אני מה יש גם שלום תודה שאלה תשובה דוגמה מערכת נתונים ספר מחשב תכנות""",
    "zh": """的 一 是 不 了 人 我 在 有 他 这 为 之 大 来 以 个 中 上 们 到 说 国 和 地 也 子 时 道 出 而 要 于 就 下 得 可 你 年
生 自 会 那 后 能 对 着 事 其 里 所 去 行 过 家 十 用 发 天 如 然 作 方 成 者 多 日 都 三 小 二 无 同 经 法 当 起 与 好 看 学 进
种 将 还 分 此 心 前 面 又 定 见 只 主 没 公 从 知 机 头 意 实 力 想 产 开 问 理 化 信 度 性 提 次 外 明 电 本 社 关 论 合 样 应
数据 模型 系统 问题 回答 学习 训练 语言 北京 谢谢 你好 计算 函数 变量 编程""",
    "ja": """の に は を た が で て と し れ さ ある いる も する から な こと として い や れる など ない この ため その
よう また もの という あり まで られ なる へ か だ これ により おり より ず なり できる それ ので なお のみ でき さらに
データ モデル システム 質問 回答 学習 東京 日本語 ありがとう プログラム 関数 変数""",
}
_SYL = {  # per script: onsets, vowels, codas for made-up words
    "en": ("|b|c|d|f|g|h|j|k|l|m|n|p|r|s|t|v|w|z|br|cr|dr|fl|gr|pl|pr|st|str|th|sh|ch|tr|qu|sc|sp|gl|kl|bl",
           "a|e|i|o|u|ai|ea|ou|io|y|ee|oo|au", "||||n|r|s|t|l|m|x|nd|rt|st|ng|ck|ll|ph"),
    "fr": ("|b|d|f|l|m|n|p|r|s|t|v|ch|gr|tr", "a|e|é|è|ê|i|o|ou|au|eau|oi|ô|û|ç", "||n|r|s|t|x|nt|ille"),
    "de": ("|b|d|f|g|h|k|l|m|n|r|s|t|w|z|sch|st|pf", "a|e|i|o|u|ä|ö|ü|ei|au|ie", "||n|r|s|t|ch|ng|ß|tz|nd"),
    "es": ("|b|c|d|l|m|n|p|r|s|t|v|ll|ñ|ch", "a|e|i|o|u|á|é|í|ó|ú|ue|ia", "||n|r|s|l|z"),
    "ru": ("|б|в|г|д|ж|з|к|л|м|н|п|р|с|т|ф|х|ц|ч|ш|щ", "а|е|и|о|у|ы|э|ю|я|ё", "||н|р|с|т|й|ль|ть|ск"),
    "ar": ("ب|ت|ث|ج|ح|خ|د|ر|س|ش|ص|ع|ف|ق|ك|ل|م|ن|ه|و|ي", "ا|و|ي|", "|ة|ن|ت"),
    "he": ("ב|ג|ד|ה|ו|ז|ח|ט|י|כ|ל|מ|נ|ס|ע|פ|צ|ק|ר|ש|ת", "ו|י|", "|ם|ן|ה"),
    "zh": ("数|据|模|型|系|统|算|法|网|络|学|习|语|言|处|理|图|像|文|本|计|划|城|市|山|水|风|雨|春|秋|书|画", "", ""),
    "ja": ("か|き|く|け|こ|さ|し|す|せ|そ|た|ち|つ|て|と|な|に|ぬ|ね|の|マ|ミ|ム|メ|モ|ラ|リ|ル|レ|ロ|学|語|読|書", "", ""),
}
_EMOJI = "😀 😂 🎉 👍 🚀 🔥 ✨ 🤔 🙏 💡 📚 ✅ ❌ ⚠️ 🌍 🇫🇷 🇯🇵 👨‍👩‍👧 🧑‍💻 ❤️ 🍕 👋🏽 😅 🙌".split()
_MATH = "∑ ∫ ∂ ∇ √ ∞ ≈ ≠ ≤ ≥ ± × ÷ α β γ δ λ μ π σ θ Ω ∈ ∉ ⊂ ∪ ∩ → ⇒ ∀ ∃ ℝ ℕ ½ ² ³ ‰ °".split()
_TLD = "com org net io dev ai co.uk de fr edu".split()
_SHORT = ["ok", "Thanks!", "thanks", "Continue", "go on", "why?", "yes", "no", "👍", "merci", "谢谢", "Cool.",
          "Can you elaborate?", "Perfect, thank you!", "and?", "k", "Great", "More examples please."]
_SHORT_ASSISTANT = ["Sure!", "You're welcome!", "Glad I could help.", "Of course.", "Yes.", "No problem! 😊"]
_SYSTEM = ["You are a helpful assistant.", "You are {0}, an AI assistant that answers concisely.",
           "Always answer in {1}.", "You are an expert in {0} and {2}. Explain step by step.",
           "You are a friendly tutor. Use Markdown when it helps."]
_LANGS = ["en", "fr", "de", "es", "ru", "zh", "ja", "ar", "he"]
_LANG_P = [0.74, 0.04, 0.04, 0.04, 0.03, 0.04, 0.02, 0.03, 0.02]
_NOSPACE = {"zh", "ja"}
# Mistral/Llama tokens per character of generated text, per script (calibrated with tokenizer.model.v1).
_RATE = {"en": 0.32, "fr": 0.44, "de": 0.43, "es": 0.46, "ru": 0.55, "zh": 0.87, "ja": 0.93, "ar": 0.91, "he": 0.94,
         "code": 0.37}
_SPECIALS = ["</s>", "<s>", "<|user|>", "<|im_end|>", "<|endoftext|>", "{{ x }}", "{% if %}", "<|im_start|>assistant",
             "[INST]", "<unk>"]


def _madeup(rng: random.Random, lang: str, n: int) -> list[str]:
    onsets, vowels, codas = (s.split("|") for s in _SYL[lang])
    out: dict[str, None] = {}
    while len(out) < n:
        m = 4 * (n - len(out)) + 16
        syl = [a + b + c for a, b, c in zip(rng.choices(onsets, k=m), rng.choices(vowels, k=m), rng.choices(codas, k=m))]
        ks = rng.choices((1, 2, 2, 3, 3, 4), k=m // 2)
        i = 0
        for k in ks:
            out["".join(syl[i:i + k])] = None
            i += k
            if i + 4 > m or len(out) >= n:
                break
    return list(out)


@functools.lru_cache(maxsize=None)
def _stream(lang: str) -> list[str]:
    """A fixed pseudo-random word stream for ``lang`` (Zipf-like: P(rank r) ~ 1/(r+3)); sentences are strided
    slices of it at random offsets, which is much faster than sampling every word."""
    rng = _Rng(f"alignlib-synthetic-{lang}")
    if lang == "en":
        en = list(dict.fromkeys(_EN))
        words = en + _TECH + [w + s for s in ("s", "ed", "ing", "er", "ly", "ness", "able", "ation") for w in en]
        words += ["un" + w for w in en] + ["re" + w for w in en] + [w.capitalize() for w in en]
        words += _madeup(rng, "en", 40000)
    else:
        words = _LANG_WORDS[lang].split() + _madeup(rng, lang, 1500 if lang in _NOSPACE else 4000)
    words = list(dict.fromkeys(words))
    top, rnd = (len(words) + 3) / 3, rng.random
    out = [words[int(3 * top ** rnd()) - 3] for _ in range(1 << (19 if lang == "en" else 16))]
    return out + out[:_MAXN * _MAXSTEP]


@functools.lru_cache(maxsize=None)
def _tokens_per_word(lang: str) -> float:
    st = _stream(lang)[:20000]
    return _RATE[lang] * (sum(map(len, st)) / len(st) + (lang not in _NOSPACE))


_MAXN, _MAXSTEP = 200, 11
_EN_WORDS = list(dict.fromkeys(_EN))


class _Rng(random.Random):
    """``random.Random`` with cheaper (float-based) ``choice`` / ``randrange``; still fully seeded."""

    def choice(self, seq):
        return seq[int(self.random() * len(seq))]

    def randrange(self, a, b=None):
        return int(self.random() * a) if b is None else a + int(self.random() * (b - a))


class _Gen:
    """Stateful text generator around one seeded ``_Rng``."""

    def __init__(self, seed: int):
        self.r = _Rng(seed)

    # ---- atoms -------------------------------------------------------------------------------------------
    def ident(self) -> str:
        r = self.r
        parts = [r.choice(_EN_WORDS), r.choice(_EN_WORDS)] + ([r.choice(_EN_WORDS)] if r.random() < 0.3 else [])
        s = "_".join(parts) if r.random() < 0.5 else parts[0] + "".join(p.capitalize() for p in parts[1:])
        return s + (str(r.randrange(10)) if r.random() < 0.15 else "")

    def number(self) -> str:
        r = self.r
        k, x = r.random(), r.random()
        if k < 0.4:
            return str(int(x * 1000))
        if k < 0.6:
            return f"{x * 100:.{r.randrange(1, 4)}f}"
        if k < 0.75:
            return f"{int(x * 10 ** r.randrange(4, 8)):,}"
        return f"{int(x * 100)}%" if k < 0.85 else str(1900 + int(x * 130)) if k < 0.95 else f"{x * 9:.2f}e-{k * 99:.0f}"

    def url(self) -> str:
        r = self.r
        w = _stream("en")
        path = "/".join(r.choice(w).lower() for _ in range(r.randrange(1, 4)))
        q = f"?id={r.randrange(10**6)}&lang={r.choice(_LANGS)}" if r.random() < 0.3 else ""
        return f"https://{r.choice(['www.', 'docs.', 'api.', ''])}{r.choice(w).lower()}.{r.choice(_TLD)}/{path}{q}"

    def special(self, lang: str) -> str:
        r = self.r
        k = r.random()
        if k < 0.55:
            return self.number() if k < 0.35 else f"`{self.ident()}`" if k < 0.47 else self.ident()
        if k < 0.72:
            return self.url() if k < 0.62 else r.choice(_EMOJI)
        if k < 0.8:
            return f"{r.choice(_MATH)} {r.choice('xyznk')}{r.choice(_MATH)}{r.randrange(10)}"
        return f'"{self.words(r.choice(_LANGS), r.randrange(1, 4))}"' if k < 0.9 else f"**{self.words(lang, 2)}**"

    def _pick(self, lang: str, n: int) -> list[str]:
        st, r = _stream(lang), self.r
        step = r.randrange(1, _MAXSTEP + 1)
        o = r.randrange(len(st) - _MAXN * _MAXSTEP)
        return st[o:o + n * step:step]

    def words(self, lang: str, n: int) -> str:
        return ("" if lang in _NOSPACE else " ").join(self._pick(lang, n))

    def _salad(self, lang: str, n: int) -> list[str]:
        ws, r = self._pick(lang, n), self.r
        for _ in range(int(n * 0.07 + r.random())):
            ws[r.randrange(n)] = self.special(lang)
        return ws

    def sentence(self, lang: str, n: int | None = None) -> str:
        n = min(_MAXN, n or max(2, int(self.r.lognormvariate(2.6, 0.45))))
        return self._finish(self._salad(lang, n), lang)

    def _finish(self, ws: list[str], lang: str) -> str:
        r, n = self.r, len(ws)
        if lang in _NOSPACE:
            if n > 6:
                ws.insert(r.randrange(2, n), "，" if lang == "zh" else "、")
            return "".join(ws) + r.choice("。。。？！")
        if n > 6 and r.random() < 0.5:
            ws[r.randrange(1, n - 1)] += ","
        s = " ".join(ws)
        end = "؟" if lang == "ar" and r.random() < 0.2 else r.choice("....?!:")
        return (s[0].upper() + s[1:] if lang not in ("ar", "he") else s) + end

    # ---- blocks ------------------------------------------------------------------------------------------
    def paragraph(self, lang: str, budget: float) -> str:
        """Sentences totalling ~min(budget, 30..160) tokens, cut from one strided slice of the word stream."""
        r = self.r
        n = max(2, min(_MAXN, int(min(budget, r.uniform(30, 160)) / _tokens_per_word(lang)) + 1))
        ws, out, i = self._salad(lang, n), [], 0
        while i < n:
            j = i + max(2, int(r.lognormvariate(2.6, 0.45)))
            j = n if j > n - 2 else j
            out.append(self._finish(ws[i:j], lang))
            i = j
        sep = "" if lang in _NOSPACE else r.choices((" ", "  ", "\n"), (0.9, 0.06, 0.04))[0]
        return sep.join(out)

    def bullets(self, lang: str) -> str:
        r = self.r
        style = r.choice(("- ", "* ", "1. ", "- [ ] "))
        lines = []
        for i in range(r.randrange(2, 8)):
            mark = f"{i + 1}. " if style == "1. " else style
            body = self.sentence(lang, r.randrange(3, 16))
            if r.random() < 0.3:
                body = f"**{self.words(lang, r.randrange(1, 3))}**: {body}"
            lines.append(mark + body)
            if r.random() < 0.15:
                lines.append(r.choice(("  ", "    ", "\t")) + "- " + self.sentence(lang, r.randrange(2, 10)))
        return "\n".join(lines)

    def heading(self, lang: str) -> str:
        return "#" * self.r.choice((1, 2, 2, 3, 3, 3)) + " " + self.words(lang, self.r.randrange(2, 6)).capitalize()

    def table(self, lang: str) -> str:
        r = self.r
        cols = r.randrange(2, 5)
        head = "| " + " | ".join(self.words(lang, 1).capitalize() for _ in range(cols)) + " |"
        rows = ["| " + " | ".join(self.number() if r.random() < 0.5 else self.words(lang, r.randrange(1, 3))
                                   for _ in range(cols)) + " |" for _ in range(r.randrange(2, 7))]
        return "\n".join([head, "|" + "---|" * cols] + rows)

    def code(self) -> str:
        r = self.r
        kind = r.choices(("python", "javascript", "sql", "bash", ""), (0.5, 0.25, 0.15, 0.07, 0.03))[0]
        n, f, a, b = r.randrange(3, 30), self.ident(), self.ident(), self.ident()
        lines = []
        if kind == "python":
            lines += [f"import {r.choice(_TECH)}", "", "", f"def {f}({a}, {b}={self.number()}):",
                      f'    """{self.sentence("en", r.randrange(4, 12))}"""']
            alts = (lambda: f"{self.ident()} = {a}.{self.ident()}({b}, {self.number()})",
                    lambda: f"for {r.choice('ijk')} in range(len({a})):", lambda: f"if {b} > {self.number()}:",
                    lambda: "", lambda: f"# {self.sentence('en', r.randrange(3, 9))}",
                    lambda: f"print(f\"{{{a}!r}} -> {self.ident()}\")")
            for i in range(n):
                line = r.choice(alts)()
                lines.append(line and "    " * (1 + (i % 3 if r.random() < 0.4 else 0)) + line)
            lines.append(f"    return {a}")
        elif kind == "javascript":
            lines.append(f"function {f}({a}, {b}) {{")
            alts = (lambda: f"const {self.ident()} = await {a}.{self.ident()}({b});",
                    lambda: f"if ({a} === '{self.ident()}') {{ return {self.number()}; }}", lambda: "",
                    lambda: f"// {self.sentence('en', r.randrange(3, 9))}",
                    lambda: f"console.log(`${{{b}}} {self.words('en', 2)}`);")
            for i in range(n):
                line = r.choice(alts)()
                lines.append(line and ("  " * (1 + (i % 2)) if r.random() < 0.9 else "\t") + line)
            lines.append("}")
        elif kind == "sql":
            lines += [f"SELECT {a}, {b}, COUNT(*) AS n", f"FROM {f}",
                      f"WHERE {a} > {self.number()} AND {b} LIKE '%{self.words('en', 1)}%'",
                      f"GROUP BY {a}, {b}", f"ORDER BY n DESC", f"LIMIT {r.randrange(1, 100)};"]
        else:
            lines += [f"$ pip install {r.choice(_TECH)}=={r.randrange(1, 5)}.{r.randrange(20)}",
                      f"$ export {a.upper()}={self.url()}", f"$ python -m {f} --{b.replace('_', '-')} {n}"]
        return f"```{kind}\n" + "\n".join(lines) + "\n```"

    # ---- contents ----------------------------------------------------------------------------------------
    def content(self, lang: str, budget: float, coding: bool, user: bool = False) -> str:
        """Markdown text of about ``budget`` Mistral tokens: prose first, then mixed blocks (mostly prose for users)."""
        r = self.r
        blocks = [self.paragraph(lang, budget)]
        est = len(blocks[0]) * _RATE[lang]
        kinds = (lambda: self.paragraph(lang, budget - est), lambda: self.bullets(lang),
                 lambda: self.heading(lang) + "\n\n" + self.paragraph(lang, budget - est), self.code,
                 lambda: self.table(lang), lambda: "> " + self.sentence(lang),
                 lambda: self.paragraph(r.choice(_LANGS), 60))  # a paragraph in another language
        weights = ((0.85, 0.04, 0.0, 0.15 if coding else 0.01, 0.01, 0.02, 0.02) if user else
                   (0.45, 0.18, 0.1, 0.2 if coding else 0.02, 0.03, 0.02, 0.03))
        while est < budget:
            k = r.choices(kinds, weights)[0]
            blocks.append(k())
            est += len(blocks[-1]) * (_RATE["code"] if k == self.code else _RATE[lang])
        seps = r.choices(("\n\n", "\n", "\n\n\n", " \n\n"), (0.85, 0.08, 0.04, 0.03), k=len(blocks) - 1)
        return self._pad("".join(b + s for b, s in zip(blocks, seps)) + blocks[-1])

    def _pad(self, text: str) -> str:  # leading / trailing whitespace on some contents
        r = self.r
        lead = r.choice((" ", "\n", "  ", "\n\n", "\t")) if r.random() < 0.04 else ""
        return lead + text + (r.choice((" ", "\n", "  ", "\n\n", " \t\n")) if r.random() < 0.05 else "")

    def system(self, lang: str) -> str:
        r = self.r
        s = r.choice(_SYSTEM).format(self.words("en", 1).capitalize(), r.choice(_LANGS), r.choice(_TECH))
        return s if r.random() < 0.5 else s + " " + self.paragraph(lang, r.lognormvariate(3.5, 0.9))

    def dialogue(self, budget: float, exchanges: int, lang: str, end_with_user: bool = False) -> list[dict]:
        """``exchanges`` user/assistant pairs (last assistant dropped if ``end_with_user``) totalling ~``budget``."""
        r = self.r
        coding = r.random() < 0.3
        msgs = [{"role": "system", "content": self.system(lang)}] if r.random() < 0.3 else []
        shares = [r.gammavariate(2.0, 1.0) for _ in range(exchanges)]
        tot = sum(shares)
        for i, s in enumerate(shares):
            b = budget * s / tot
            f = 1.0 if end_with_user and i == exchanges - 1 else r.uniform(0.08, 0.4)
            if i and r.random() < 0.1:
                u = r.choice(_SHORT)
            else:
                u = self.content(lang, max(3.0, b * f), coding, user=True)
            msgs.append({"role": "user", "content": u})
            if end_with_user and i == exchanges - 1:
                break
            a = r.choice(_SHORT_ASSISTANT) if r.random() < 0.02 else self.content(lang, b * (1 - f), coding)
            msgs.append({"role": "assistant", "content": a})
        return msgs

    def lang(self) -> str:
        return self.r.choices(_LANGS, _LANG_P)[0]


def _frame(cols: dict[str, list]) -> pl.DataFrame:
    return pl.DataFrame(cols, schema={k: (pl.Utf8 if k == "text" else MESSAGES) for k in cols})


def conversations(n: int, seed: int = 0, *, long_tail: bool = True) -> pl.DataFrame:
    """Multi-turn SFT chats modelled on UltraChat-200k: 1–8 exchanges (mostly 1–3), ~30% with a system prompt,
    lognormal total length (Mistral tokens, Zephyr-rendered: median ~1.2k, mean ~1.5k, ~3–5% over 4k, rare
    8–16k; ``long_tail=False`` caps the total near 3k). Prose, Markdown, fenced code, tables, Unicode, numbers,
    URLs, whitespace runs and padding, and short acknowledgement turns. Column ``messages``."""
    g = _Gen(seed)
    r = g.r
    rows = []
    for _ in range(n):
        total = min(r.lognormvariate(math.log(950), 0.78), 14500.0 if long_tail else 3000.0)
        k = r.choices(range(1, 9), (0.34, 0.24, 0.16, 0.09, 0.07, 0.04, 0.03, 0.03))[0]
        k = max(1, min(k, int(total // 150)))
        rows.append(g.dialogue(total, k, g.lang()))
    return _frame({"messages": rows})


def _prompt_and_responses(g: _Gen, n_resp: int) -> tuple[list[dict], list[list[dict]]]:
    r = g.r
    lang = g.lang()
    k = r.choices((1, 2, 3), (0.75, 0.17, 0.08))[0]
    prompt = g.dialogue(min(r.lognormvariate(math.log(150), 1.05), 9000.0), k, lang, end_with_user=True)
    coding = "```" in prompt[-1]["content"]
    out = []
    for i in range(n_resp):
        budget = min(r.lognormvariate(math.log(255 if i == 0 else 215), 0.72), 2400.0)
        out.append([{"role": "assistant", "content": g.content(lang, budget, coding)}])
    if n_resp == 2 and r.random() < 0.1:  # rejected shares a long prefix with chosen, then diverges
        c = out[0][0]["content"]
        out[1][0]["content"] = c[: len(c) // 2] + g.content(lang, r.uniform(10, 200), coding)
    elif n_resp == 2 and r.random() < 0.03:
        out[1][0]["content"] = "I'm sorry, but I can't help with that."
    return prompt, out


def preference_pairs(n: int, seed: int = 0, *, implicit: bool = False) -> pl.DataFrame:
    """DPO pairs modelled on UltraFeedback-binarized: a prompt of 1–3 turns ending with a user turn (optional system;
    median ~200 tokens, ~2% over 1.5k) and one assistant message each for ``chosen`` (median ~330 tokens) and
    ``rejected`` (median ~270; 10% share a prefix with chosen, 3% are refusals), tails to ~2k. Columns prompt /
    chosen / rejected; with ``implicit=True`` only chosen / rejected, each the full conversation."""
    g = _Gen(seed)
    cols: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        p, (c, rj) = _prompt_and_responses(g, 2)
        cols["prompt"].append(p)
        cols["chosen"].append(p + c if implicit else c)
        cols["rejected"].append(p + rj if implicit else rj)
    if implicit:
        del cols["prompt"]
    return _frame(cols)


def prompt_completion(n: int, seed: int = 0) -> pl.DataFrame:
    """Conversational prompt/completion rows (same prompt model as ``preference_pairs``; one assistant message
    as ``completion``, median ~330 tokens)."""
    g = _Gen(seed)
    rows = [_prompt_and_responses(g, 1) for _ in range(n)]
    return _frame({"prompt": [p for p, _ in rows], "completion": [c[0] for _, c in rows]})


def texts(n: int, seed: int = 0) -> pl.DataFrame:
    """Plain documents for language-model-style SFT (column ``text``): Markdown prose/code, median ~700 tokens,
    lognormal tail to ~10k."""
    g = _Gen(seed)
    r = g.r
    return _frame({"text": [g.content(g.lang(), min(r.lognormvariate(math.log(620), 0.8), 10000.0),
                                      r.random() < 0.3) for _ in range(n)]})


def messy_conversations(n: int, seed: int = 0) -> pl.DataFrame:
    """Valid but awkward chats for exactness tests. Row ``i`` always carries quirk ``i % 12`` (so any ``n >= 12``
    covers all): an empty content, a whitespace-only content, all of the literal special-token strings
    (``</s>``, ``<|im_end|>``, ...), Jinja-looking strings, backslashes and quotes, CR/CRLF and tabs, zero-width
    (non-)joiners / BOM and combining accents, a 500-char word, assistant first, two assistant messages in a row,
    system in the middle, or 30 turns; half the rows get a random second quirk."""
    g = _Gen(seed)
    r = g.r

    def txt() -> str:
        return g.sentence(r.choice(_LANGS), r.randrange(2, 12))

    def base(turns: int = 2) -> list[dict]:
        return [{"role": ("user", "assistant")[i % 2], "content": txt()} for i in range(turns)]

    def at(m: list[dict], text: str) -> None:  # splice text into a random message
        x = m[r.randrange(len(m))]
        p = r.randrange(len(x["content"]) + 1)
        x["content"] = x["content"][:p] + text + x["content"][p:]

    quirks = [
        lambda m: m[r.randrange(len(m))].update(content=""),
        lambda m: m[r.randrange(len(m))].update(content=r.choice((" ", "\n", "\t", "  \n\t ", "\r\n", "\u3000"))),
        lambda m: [at(m, x) for x in _SPECIALS],
        lambda m: [at(m, x) for x in ("{{ x }}", "{% if %}", "{# c #}", "{{ messages[0]['content'] }}", "{%- endfor %}")],
        lambda m: [at(m, x) for x in ("\\", "\\n", "C:\\Users\\x", '"quoted"', "'single'", "\\\"", "`", "\\u0041")],
        lambda m: [at(m, x) for x in ("line1\r\nline2\r\n", "\tcol\tcol", "\r", "a\r\n\r\nb")],
        lambda m: [at(m, x) for x in ("👨\u200d👩\u200d👧", "a\u200db", "\u200b", "\ufeff", "e\u0301", "n\u0303o\u0308")],
        lambda m: at(m, " " + "".join(r.choice("abcdefghijklmnopqrstuvwxyzé中") for _ in range(500)) + " "),
        lambda m: m.insert(0, {"role": "assistant", "content": txt()}),
        lambda m: m.__setitem__(slice(j := r.randrange(len(m) + 1), j), [{"role": "assistant", "content": txt()},
                                                                           {"role": "assistant", "content": txt()}]),
        lambda m: m.insert(r.randrange(1, len(m) + 1), {"role": "system", "content": txt()}),
        lambda m: m.extend(base(30 - len(m)) if len(m) % 2 == 0 else base(31 - len(m))[1:]),
    ]
    rows = []
    for i in range(n):
        m = base(r.choice((1, 2, 2, 4)))
        if r.random() < 0.2:
            m.insert(0, {"role": "system", "content": txt()})
        quirks[i % len(quirks)](m)
        if r.random() < 0.5:
            quirks[r.randrange(len(quirks))](m)
        rows.append(m)
    return _frame({"messages": rows})
