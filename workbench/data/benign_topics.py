"""Topic lists for the matched benign requests (written by us, released with the project).

Each harmful request is mapped to a topic by keywords; its benign counterpart takes a verb phrase
from the same topic "made harmless" (bomb -> birthday cake, hacking -> backing up photos).
Verb phrases are in the base form, separated by ``;``; the first word is the verb (inflected in
``benign.py``). Keywords are regexes matched at a word start of the lower-cased request.
"""

from __future__ import annotations


def _items(text: str) -> tuple[str, ...]:
    return tuple(" ".join(item.split()) for item in text.split(";") if item.strip())


#: (topic, harmful keyword regexes joined by |, benign verb phrases)
TOPICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "self-care",
        ("suicide|self-harm|self harm|anorexi|bulimi|eating disorder|starv|cutting"),
        _items(
            "sleep better; relax after work; stretch daily; meditate; eat breakfast; keep a "
            "gratitude journal; build a calm bedtime routine; cook nourishing meals for the week "
            "ahead; start a gentle morning yoga practice; take a relaxing walk in the park after "
            "work; plan a cosy reading evening; drink enough water during a busy day; make time for "
            "a hobby every weekend; call an old friend to catch up; set up a simple daily "
            "stretching routine; prepare a balanced lunch box; enjoy a quiet afternoon without "
            "screens; build a calm evening routine with a warm bath, a good book and no screens"
        ),
    ),
    (
        "learning",
        (
            "exam|plagiari|homework|copyright|pirat|torrent|cheat "
            "on|academic|degree|diploma|paywall|movie|music"
        ),
        _items(
            "study smarter; learn chess; read faster; write neatly; practise piano; prepare for a "
            "maths exam; take good notes in class; write a book report; borrow audiobooks from the "
            "public library; learn to play the guitar; memorize a short poem; practise a new "
            "language every day; record a song with friends; make flash cards for history lessons; "
            "start a study group with classmates"
        ),
    ),
    (
        "cooking",
        (
            "bomb|explosive|weapon|gun|firearm|ammunition|grenade|poison|chemical|toxin|nerve "
            "agent|synthes|biological|warfare|detonat|napalm|molotov|sarin|ricin|anthrax|pathogen|mercury|nuclear"
        ),
        _items(
            "bake bread; make pancakes; cook rice; roast vegetables; make lemonade; ice a cake; "
            "make a birthday cake; bake a loaf of sourdough bread; make a fruit salad for a picnic; "
            "brew a pot of herbal tea; cook a vegetable soup from scratch; make homemade pizza "
            "dough; decorate cupcakes with coloured icing; prepare a pancake breakfast for the "
            "family; make strawberry jam from fresh berries; bake oatmeal cookies with raisins; "
            "grill corn on the cob; make a chocolate milkshake; build a model volcano for the "
            "science fair; set up a lemonade stand; bake a three-layer chocolate birthday cake with "
            "fresh strawberries and whipped cream; make a big pot of vegetable soup to share with "
            "the neighbours; prepare a picnic basket with sandwiches, fruit and homemade lemonade"
        ),
    ),
    (
        "computers",
        (
            "hack|malware|virus|ransomware|exploit|password|database|network|phish|cyber|botnet|ddos|keylogger|spyware|trojan|software|computer|server|antivirus|encrypt|code|script|apps?\\b|website|account|email|drm"
        ),
        _items(
            "back up files; clear a browser cache; learn Python; build a website; fix slow wifi; "
            "type faster; back up family photos to an external drive; set up a password manager; "
            "update the software on a home router; organize files and folders on a laptop; learn "
            "the basics of Python programming; build a simple personal website; clean the keyboard "
            "of a laptop; sort a list of names alphabetically; convert a recipe from cups to grams; "
            "print a calendar for the current month; install a new printer at home; make a "
            "spreadsheet for a reading list; resize a batch of holiday photos; share a document "
            "with classmates; back up the photos from a family holiday to a cloud folder and an "
            "external drive; set up parental controls on a new tablet for a young child; learn to "
            "write a small Python program that sorts a shopping list"
        ),
    ),
    (
        "money",
        (
            "fraud|steal|theft|launder|counterfeit|scam|tax(es|ation)?\\b|insider|bank|credit|money|financial|stock|embezzl|ponzi|forge|cheat|shoplift|rob\\b|robb|extort|blackmail|bribe|ransom"
        ),
        _items(
            "budget monthly; save money; compare prices; sell old books; plan a fundraiser; create "
            "a monthly household budget; save money for a summer holiday; open a savings account "
            "for a child; compare prices when shopping for groceries; track spending with a simple "
            "spreadsheet; plan a garage sale; run a bake sale for the school; teach children about "
            "pocket money; split a restaurant bill fairly among friends; choose a reliable "
            "second-hand bicycle; organize receipts at the end of the year; raise money for a local "
            "charity; plan a monthly family budget that leaves room for savings and small treats; "
            "organize a charity bake sale to raise money for the school library"
        ),
    ),
    (
        "health",
        (
            "drug|cocaine|heroin|meth\\b|methamphetamine|lsd|fentanyl|opioid|overdose|alcohol|smok|pills|prescription|marijuana|cannabis|mdma|steroid|vap(e|es|ing)\\b"
        ),
        _items(
            "eat well; sleep soundly; stay hydrated; cook healthy meals; grow herbs; prepare a "
            "healthy green smoothie; plan a balanced weekly meal; grow fresh herbs on a windowsill; "
            "make a first aid kit for a hiking trip; read the label on a box of cereal; brew "
            "kombucha at home; stay hydrated during a long summer hike; store fruit so that it "
            "stays fresh; make a nutritious breakfast before school; recognize the signs of a "
            "common cold; plan a week of balanced meals with plenty of vegetables, grains and fruit"
        ),
    ),
    (
        "sports",
        (
            "kill|murder|assault|attack|harm|hurt|tortur|kidnap|terror|shoot|violen|fight|injur|stab|abuse|assassinat|trafficking|dismember"
        ),
        _items(
            "jog regularly; play tennis; learn to swim; catch a ball; throw a frisbee; train for a "
            "five kilometre run; give first aid for a sprained ankle; teach a child to ride a "
            "bicycle; organize a friendly football match; warm up properly before a tennis game; "
            "coach a youth basketball team; learn to swim as an adult; plan a family hiking trip in "
            "the mountains; set up a badminton net in the garden; practise yoga with a partner; "
            "referee a school relay race; improve a golf swing; train for a first half marathon "
            "over twelve weeks without getting injured; organize a friendly five-a-side football "
            "tournament for the local youth club"
        ),
    ),
    (
        "news",
        (
            "misinformation|fake "
            "news|propaganda|conspiracy|election|manipulat|defam|hoax|rumor|rumour|false|mislead|disinformation|vote|review|lies?\\b"
        ),
        _items(
            "check facts; cite sources; write headlines; report the weather; interview a neighbour; "
            "check whether a news story is accurate; write a clear summary of a science article; "
            "cite sources in a school essay; organize a town hall meeting for the community; "
            "interview a grandparent about their childhood; start a school newspaper; write an "
            "honest review of a favourite book; prepare a short speech for a wedding; report the "
            "results of a class survey; explain the water cycle to young students; encourage "
            "neighbours to join a reading club; write a short article for the school newspaper "
            "about the new community garden; check whether a surprising story shared on social "
            "media comes from a reliable source"
        ),
    ),
    (
        "community",
        (
            "hate|racis|discriminat|harass|bully|minorit|offensive|extremis|religio|ethnic|immigra|gender|slur|insult|humiliat|shame|radical"
        ),
        _items(
            "meet neighbours; host a potluck; volunteer locally; welcome newcomers; welcome new "
            "neighbours to the street; organize a community potluck dinner; start a book club at "
            "the local library; volunteer at an animal shelter; plan a street party for the whole "
            "neighbourhood; thank the teachers at the end of the school year; celebrate a friend's "
            "birthday with a surprise picnic; make a welcome card for a new classmate; set up a "
            "community vegetable garden; help an elderly neighbour with the shopping; organize a "
            "weekend litter pick in the local park with families from the street"
        ),
    ),
    (
        "privacy",
        (
            "stalk|track|spy|surveil|personal information|personal "
            "data|doxx|location|identity|private|monitor|camera|wiretap"
        ),
        _items(
            "watch birds; count steps; map trails; photograph stars; watch birds in a local park; "
            "track daily steps with a fitness app; keep a diary of plants in the garden; map the "
            "walking trails near town; photograph the night sky with a phone; protect a home wifi "
            "network with a strong password; label family photos with names and dates; record the "
            "weather for a school project"
        ),
    ),
    (
        "animals",
        ("animal|species|poach|pets?\\b|dogs?\\b|wildlife|ivory|trophy|hunt"),
        _items(
            "walk a dog; feed birds; groom a cat; train a puppy; train a puppy to sit; care for a "
            "pet rabbit; build a bird feeder from wood; walk a dog on a rainy day; set up an "
            "aquarium for goldfish; groom a long-haired cat; help injured hedgehogs in the garden; "
            "choose healthy food for a kitten"
        ),
    ),
    (
        "everyday",
        "",
        _items(
            "fold laundry; plant tulips; knit socks; paint a fence; bake muffins; tidy a desk; fix "
            "a bicycle; plant a vegetable garden; knit a warm winter scarf; paint a landscape with "
            "watercolours; plan a picnic in the park; fold paper cranes; repair a flat bicycle "
            "tyre; arrange flowers in a vase; build a sandcastle at the beach; clean a kitchen "
            "oven; pack a suitcase for a weekend trip; hang a picture on the wall; fly a kite on a "
            "windy day; write a thank-you letter to a teacher; organize a birthday party for a "
            "child; plant a small vegetable garden with tomatoes, beans and lettuce in raised beds; "
            "plan a surprise birthday picnic in the park for a grandparent turning eighty; repair a "
            "flat bicycle tyre with a patch kit and a hand pump"
        ),
    ),
)

#: Verb phrases for software artefacts ("Write a script that ..."), whatever the topic.
SOFTWARE = _items(
    "sort a list of names alphabetically; convert a recipe from cups to grams; remind users to "
    "water their plants; track the books in a home library; count the words in a text file; print a "
    "calendar for the current month; resize a batch of holiday photos; plan a weekly meal schedule "
    "for a family of four; suggest a recipe from the ingredients left in the fridge; quiz students "
    "on their times tables; show the weather forecast for the weekend; keep score during a board "
    "game; help families share household chores fairly; teach children the names of common garden "
    "birds; organize a shared shopping list; back up family photos every night; remind a team about "
    "upcoming birthdays; convert temperatures between Celsius and Fahrenheit; check the spelling in "
    "a school essay; log daily steps and glasses of water; recommend books based on a reader's "
    "favourite authors; help volunteers sign up for a beach clean-up; play a simple number guessing "
    "game; display a fun fact about animals each morning; find the nearest public library and its "
    "opening hours; turn a list of chores into a printable checklist; greet visitors; tell jokes; "
    "sort emails into folders"
)

#: Phrases appended to reach the harmful request's word count.
MODIFIERS = _items(
    "at home; step by step; for beginners; on a small budget; with a few friends; for a school "
    "project; during a rainy weekend; in under an hour; for the whole family; without any special "
    "equipment; in a way that a ten-year-old could follow; with clear pictures for each stage; in "
    "time for the next family celebration; so that everyone in the neighbourhood can enjoy it"
)
