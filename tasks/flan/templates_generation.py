"""Templates of the Flan QA, reading-comprehension, generation and chain-of-thought families.

All wording written for this project. ``inversion`` templates swap the direction (e.g. write
the question for a given answer); ``cot`` templates make the target a rationale followed by the
answer.
"""

from __future__ import annotations

# question, answer
CLOSED_QA = (
    ("{question}", "{answer}"),
    ("Answer this question: {question}", "{answer}"),
    ("Q: {question}\nA:", "{answer}"),
    ("Trivia time. {question}", "{answer}"),
    ("Please answer from general knowledge.\n\n{question}", "{answer}"),
    ("What is the answer to this? {question}", "{answer}"),
    ("Question: {question}\n\nShort answer:", "{answer}"),
    ('Write a trivia question whose answer is "{answer}".', "{question}", "inversion"),
)

# question, options, answer (multiple-choice exam-style question)
MC_QA = (
    ("{question}{options}", "{answer}"),
    ("Answer the multiple-choice question.\n\n{question}{options}", "{answer}"),
    ("Question: {question}\n\nWhich answer is correct?{options}", "{answer}"),
    ("Here is a science question: {question}{options}", "{answer}"),
    ("{question}\n\nPick the best answer.{options}", "{answer}"),
    ("Test question: {question}\nYour answer:{options}", "{answer}"),
    ("Think about this: {question}{options}", "{answer}"),
    ('Write an exam question that has "{answer}" as its answer.', "{question}", "inversion"),
)

# context, question, answer (answer from the passage)
EXTRACTIVE_RC = (
    ("{context}\n\nQuestion: {question}", "{answer}"),
    ("Read the passage and answer.\n\n{context}\n\n{question}", "{answer}"),
    ("Passage: {context}\nQ: {question}\nA:", "{answer}"),
    ("{question}\n\nThe answer is in this text: {context}", "{answer}"),
    ("Using the article below, answer: {question}\n\n{context}", "{answer}"),
    ('Background:\n{context}\n\nWhat is the answer to "{question}"?', "{answer}"),
    ("Here is a text. {context}\n\nNow, {question}", "{answer}"),
    (
        '{context}\n\nWrite a question about this passage whose answer is "{answer}".',
        "{question}",
        "inversion",
    ),
)

# context, question, options, answer
RC_MC = (
    ("{context}\n\n{question}{options}", "{answer}"),
    (
        "Read this and answer the question.\n\n{context}\n\nQuestion: {question}{options}",
        "{answer}",
    ),
    ("Context: {context}\nQuestion: {question}\nAnswer:{options}", "{answer}"),
    ("{question}\n\nUse the story to decide: {context}{options}", "{answer}"),
    ("Story: {context}\n\nGiven the story, {question}{options}", "{answer}"),
    ('After reading "{context}", what is the answer to: {question}{options}', "{answer}"),
    ("Here is a short text: {context}\nChoose the right answer. {question}{options}", "{answer}"),
    (
        '{context}\n\nAsk a question about this text whose answer is "{answer}".',
        "{question}",
        "inversion",
    ),
)

# document, summary
SUMMARIZE = (
    ("Summarize this:\n\n{document}", "{summary}"),
    ("{document}\n\nWhat is a short summary of the above?", "{summary}"),
    ("Article: {document}\n\nSummary:", "{summary}"),
    ("Write a brief summary of the following text.\n\n{document}", "{summary}"),
    ("{document}\n\nTL;DR:", "{summary}"),
    ("Give the key points of this article:\n{document}", "{summary}"),
    ("Condense the text below into a few words.\n\n{document}", "{summary}"),
    ("Write an article based on this summary: {summary}", "{document}", "inversion"),
)

# document, summary (an email and its subject line)
EMAIL_SUBJECT = (
    ("Write a subject line for this email:\n\n{document}", "{summary}"),
    ("{document}\n\nWhat would be a good subject for this message?", "{summary}"),
    ("Email: {document}\nSubject:", "{summary}"),
    ("Suggest a title for the following email.\n\n{document}", "{summary}"),
    ("Here is an email body: {document}\n\nGive it a short subject line.", "{summary}"),
    ("{document}\n\nSubject line:", "{summary}"),
    ('Write an email with the subject "{summary}".', "{document}", "inversion"),
)

# source, target, source_lang, target_lang
TRANSLATION = (
    ("Translate to {target_lang}:\n\n{source}", "{target}"),
    ("{source}\n\nTranslate this into {target_lang}.", "{target}"),
    ("{source_lang}: {source}\n{target_lang}:", "{target}"),
    ("How do you say this in {target_lang}? {source}", "{target}"),
    ("Give the {target_lang} version of this {source_lang} sentence:\n{source}", "{target}"),
    ('Translate from {source_lang} to {target_lang}: "{source}"', "{target}"),
    ("Please render the following text in {target_lang}.\n\n{source}", "{target}"),
    ("Here is a sentence in {source_lang}: {source}\n\nWhat is it in {target_lang}?", "{target}"),
)

# data, text (structured record -> sentence)
STRUCT_TO_TEXT = (
    ("Write a sentence that uses this data: {data}", "{text}"),
    ("Data: {data}\n\nDescribe it in one sentence.", "{text}"),
    ("Turn these facts into text.\n\n{data}", "{text}"),
    ("{data}\n\nWhat sentence expresses the information above?", "{text}"),
    ("Generate a description from the following record: {data}", "{text}"),
    ("Facts: {data}\nSentence:", "{text}"),
    ("Here is some structured information: {data}\n\nWrite it up in plain English.", "{text}"),
    ("Sentence: {text}\n\nExtract the structured data from this sentence.", "{data}", "inversion"),
)

# premise, hypothesis, options, answer, rationale
COT_NLI = (
    (
        "Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise entail the "
        "hypothesis? Explain, then answer.{options}",
        "{rationale} So the answer is {answer}.",
    ),
    (
        '{premise}\n\nCan we conclude that "{hypothesis}"? Think it through step by step.{options}',
        "{rationale} The answer: {answer}.",
    ),
    (
        "Reason about this pair and give your verdict.\nA: {premise}\nB: {hypothesis}{options}",
        "{rationale} Therefore: {answer}.",
    ),
    (
        'Is "{hypothesis}" true given "{premise}"? Give your reasoning first.{options}',
        "{rationale} Answer: {answer}.",
    ),
    (
        "Statement: {premise}\nClaim: {hypothesis}\nExplain whether the claim follows.{options}",
        "{rationale} So, {answer}.",
    ),
    (
        "Let's think carefully. {premise} Does that mean {hypothesis}?{options}",
        "{rationale} Hence the answer is {answer}.",
    ),
    (
        'Decide with a short justification: does "{premise}" support "{hypothesis}"?{options}',
        "{rationale} Final answer: {answer}.",
    ),
)

# question, options, answer, rationale
COT_MC = (
    (
        "{question}{options}\nExplain your reasoning before answering.",
        "{rationale} So the answer is {answer}.",
    ),
    ("Question: {question}{options}\n\nThink step by step.", "{rationale} The answer: {answer}."),
    ("Use common sense and explain: {question}{options}", "{rationale} Therefore, {answer}."),
    ("Answer with a short explanation.\n\n{question}{options}", "{rationale} Answer: {answer}."),
    ("{question}\nReason it out, then pick.{options}", "{rationale} So: {answer}."),
    ("Let's think about this. {question}{options}", "{rationale} Hence, {answer}."),
    (
        "Why is one of these the right answer? {question}{options}",
        "{rationale} The best choice is {answer}.",
    ),
)

# question, answer, rationale
COT_MATH = (
    ("{question}\nLet's think step by step.", "{rationale}\nThe answer is {answer}."),
    ("Solve the word problem and show your work.\n\n{question}", "{rationale}\nAnswer: {answer}."),
    ("Q: {question}\nA: Let's work it out.", "{rationale}\nSo the answer is {answer}."),
    ("Work through this problem carefully: {question}", "{rationale}\nFinal answer: {answer}."),
    ("{question}\n\nExplain each step, then give the number.", "{rationale}\nTherefore, {answer}."),
    ("Math problem: {question}\nSolution:", "{rationale}\nThe result is {answer}."),
    ("Reason step by step to answer: {question}", "{rationale}\nHence {answer}."),
)
