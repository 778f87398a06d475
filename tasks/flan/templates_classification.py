"""Templates of the Flan classification families (all wording written for this project).

A *family* is a tuple of (inputs, targets) pairs over a fixed set of fields; data sets of one
format share a family (e.g. RTE, MNLI, ANLI, SNLI and CB all use ``NLI``). ``{options}`` is the
answer-options block (see ``t5x_instruct.data.templates.options``), empty in ``no_opt``
variants, so each template must still read naturally without it.
"""

from __future__ import annotations

# premise, hypothesis, options, answer
NLI = (
    ('{premise}\n\nDoes it follow that "{hypothesis}"?{options}', "{answer}"),
    (
        "Premise: {premise}\nHypothesis: {hypothesis}\n\nIs the hypothesis entailed by the "
        "premise?{options}",
        "{answer}",
    ),
    (
        "Read the passage and decide whether the claim is supported.\n\nPassage: {premise}\n"
        "Claim: {hypothesis}{options}",
        "{answer}",
    ),
    ('If "{premise}", can we say that "{hypothesis}"?{options}', "{answer}"),
    ("{premise}\n\nBased on that, is this true: {hypothesis}{options}", "{answer}"),
    (
        "Here is a statement: {premise}\n\nAnd a second one: {hypothesis}\n\nDoes the first "
        "statement imply the second?{options}",
        "{answer}",
    ),
    (
        'Given the text below, is "{hypothesis}" a valid conclusion?\n\n{premise}{options}',
        "{answer}",
    ),
    ("Text: {premise}\n\nQuestion: {hypothesis} True or not?{options}", "{answer}"),
)

# context, options, answer (the most plausible continuation / solution)
COMMONSENSE = (
    ("{context}\n\nWhat is the most likely next part?{options}", "{answer}"),
    ("Pick the most sensible way to continue:\n\n{context}{options}", "{answer}"),
    ("{context} ...\n\nHow does this most plausibly go on?{options}", "{answer}"),
    ("Use common sense to complete the following.\n\n{context}{options}", "{answer}"),
    ('Which option fits best after this text?\n"{context}"{options}', "{answer}"),
    ("Situation: {context}\n\nWhat makes the most sense?{options}", "{answer}"),
    ("Finish this in the most reasonable way: {context}{options}", "{answer}"),
    ("Here is the beginning: {context}\nChoose the best ending.{options}", "{answer}"),
)

# text, options, answer
SENTIMENT = (
    ("{text}\n\nIs this review positive or negative?{options}", "{answer}"),
    ("What is the sentiment of the following text?\n\n{text}{options}", "{answer}"),
    ("Text: {text}\n\nHow does the writer feel about the subject?{options}", "{answer}"),
    ('Classify the tone of this message: "{text}"{options}', "{answer}"),
    ("{text}\n\nWould you say the author liked it?{options}", "{answer}"),
    ("Decide if the opinion below is favourable.\n\n{text}{options}", "{answer}"),
    ("Read this and tell me the mood: {text}{options}", "{answer}"),
    ("Write a short {answer} text, like a review or a post.", "{text}", "inversion"),
)

# sentence1, sentence2, options, answer
PARAPHRASE = (
    (
        "Do these two sentences mean the same thing?\n\n{sentence1}\n{sentence2}{options}",
        "{answer}",
    ),
    (
        "Sentence A: {sentence1}\nSentence B: {sentence2}\n\nAre they paraphrases?{options}",
        "{answer}",
    ),
    ('"{sentence1}" and "{sentence2}"\n\nIs the meaning the same?{options}', "{answer}"),
    ("Compare:\n1) {sentence1}\n2) {sentence2}\nDo they say the same?{options}", "{answer}"),
    ("{sentence1}\n\nIs that equivalent to: {sentence2}{options}", "{answer}"),
    (
        "Check whether the second text restates the first.\nFirst: {sentence1}\nSecond: "
        "{sentence2}{options}",
        "{answer}",
    ),
    ('Would a reader take "{sentence1}" and "{sentence2}" to mean the same?{options}', "{answer}"),
    ("First: {sentence1}\nSecond: {sentence2}\nSame meaning?{options}", "{answer}"),
)

# title, text, options, answer
TOPIC = (
    ("{title}\n\n{text}\n\nWhat is this article about?{options}", "{answer}"),
    ("Which section of a newspaper would this go in?\n\n{title}: {text}{options}", "{answer}"),
    ("Headline: {title}\nSummary: {text}\n\nTopic?{options}", "{answer}"),
    ("Categorise this news item: {text}{options}", "{answer}"),
    ("{text}\n\nWhat kind of news is this?{options}", "{answer}"),
    ('Assign a category to the story "{title}".\n\n{text}{options}', "{answer}"),
    ("News: {title} - {text}\nSubject area:{options}", "{answer}"),
    ("Write a headline for this {answer} story:\n\n{text}", "{title}", "inversion"),
)

# sentence, options, answer (the option that fills the blank "_")
BLANK = (
    ("{sentence}\n\nWhat goes in the blank?{options}", "{answer}"),
    ("Fill in the _ in this sentence:\n{sentence}{options}", "{answer}"),
    ("Which choice best completes the sentence?\n\n{sentence}{options}", "{answer}"),
    ("Complete: {sentence}{options}", "{answer}"),
    ('In "{sentence}", who or what does the blank stand for?{options}', "{answer}"),
    ("Sentence with a gap: {sentence}\n\nWhat fits the gap?{options}", "{answer}"),
    ("Replace the underscore with the right option.\n\n{sentence}{options}", "{answer}"),
)

# sentence, pronoun, options, answer
PRONOUN = (
    ('{sentence}\n\nWho or what does "{pronoun}" refer to?{options}', "{answer}"),
    ('In the sentence "{sentence}", what is "{pronoun}"?{options}', "{answer}"),
    ("Sentence: {sentence}\nPronoun: {pronoun}\n\nWhich is the referent?{options}", "{answer}"),
    ('Resolve the pronoun "{pronoun}":\n{sentence}{options}', "{answer}"),
    ('{sentence}\n\nHere, "{pronoun}" means which one?{options}', "{answer}"),
    ('Read: {sentence}\nWhom does the word "{pronoun}" point to?{options}', "{answer}"),
    ('Work out what "{pronoun}" stands for in this text.\n\n{sentence}{options}', "{answer}"),
)

# sentence, options, answer
ACCEPTABILITY = (
    ("Is this sentence grammatical English?\n\n{sentence}{options}", "{answer}"),
    ('"{sentence}"\n\nWould a linguist call this acceptable?{options}', "{answer}"),
    ("Sentence: {sentence}\nIs it well formed?{options}", "{answer}"),
    ("Check the grammar: {sentence}{options}", "{answer}"),
    ("Does the following read as a correct English sentence?\n{sentence}{options}", "{answer}"),
    ("{sentence}\n\nGrammatically, is this acceptable?{options}", "{answer}"),
    ("Judge the sentence below for grammaticality.\n\n{sentence}{options}", "{answer}"),
)

# question, options, answer (type of the expected answer)
QUESTION_TYPE = (
    ("What kind of answer does this question expect?\n\n{question}{options}", "{answer}"),
    ("Question: {question}\n\nThe answer would be a...{options}", "{answer}"),
    ("Classify the question by the type of its answer: {question}{options}", "{answer}"),
    (
        "{question}\n\nIs this asking about a person, place, number, or something else?{options}",
        "{answer}",
    ),
    ('Which category fits the answer to "{question}"?{options}', "{answer}"),
    ('To answer "{question}", what would you need to give?{options}', "{answer}"),
    ("Write a question whose answer is of type: {answer}", "{question}", "inversion"),
)

# passage, question, options, answer (yes/no question about a passage)
BOOLQ = (
    ("{passage}\n\nQuestion: {question}?{options}", "{answer}"),
    ("Read the text and answer yes or no.\n\n{passage}\n\n{question}?{options}", "{answer}"),
    ("Passage: {passage}\n\nBased on the passage, {question}?{options}", "{answer}"),
    ("{question}?\n\nUse this to decide: {passage}{options}", "{answer}"),
    ('Given that "{passage}"\n\nIs it true that {question}?{options}', "{answer}"),
    ("Here is some background: {passage}\nNow answer: {question}?{options}", "{answer}"),
    (
        "Answer the question about the article.\nArticle: {passage}\nQuestion: {question}?"
        "{options}",
        "{answer}",
    ),
    (
        "{passage}\n\nWrite a yes/no question about this text whose answer is {answer}.",
        "{question}?",
        "inversion",
    ),
)
