// tq-llamacpp: the text every model reads once to calibrate its KV centring (tq-kv-calibrate.cpp).
// Written for this project (no quoted source): narrative, dialogue, explanation, a list, numbers,
// a chat exchange and code, so that the keys cover what users send rather than one kind of prose.
// Changing it changes every model's statistics (the text is part of the calibration file's key).
#pragma once

static const char TQ_CALIB_TEXT[] = R"TQCALIB(The ferry left the harbour a little after six, when the fog had thinned enough for the pilot to see the first buoy. Mara stood at the rail with her coat buttoned to the chin and watched the town shrink behind them: the grey church, the row of painted houses, the crane that had not moved in eleven years. She had promised her brother that she would write as soon as she arrived, and she had already begun the letter in her head. Dear Tomas, the island is smaller than the map suggests, and the wind is larger.

"You're the new teacher," said a man beside her. He wore a fisherman's sweater and held a paper cup of coffee in both hands.
"I am. Is it that obvious?"
"Nobody else goes out this time of year. The school has been closed since March. The children will be glad, though perhaps not at first."
"What happened in March?"
He shrugged. "The old teacher retired. She taught my father, and me, and half the people you will meet. She knew every family's business and kept most of it to herself."

The island has one road, two shops, a post office that opens on Tuesdays and Fridays, and a lighthouse that was automated in 1987. About three hundred people live there through the winter; in summer the number can triple. The school serves children from five to twelve years old, in a single room with a stove, nine desks, a piano that needs tuning, and a shelf of atlases older than most of the parents.

How a lighthouse keeps its rhythm is simpler than it looks. A lamp turns inside a ring of lenses; each lens gathers the light into a beam, and as the ring rotates the beams sweep past a ship at fixed intervals. Sailors read the pattern, for example two flashes every ten seconds, and compare it with the chart to learn which light they are seeing. If the motor fails, a weight-driven clockwork can turn the lenses for several hours, long enough for someone to climb the stairs and repair it.

Things to bring for the first week:
1. Chalk, pencils, and a box of exercise books.
2. A torch with spare batteries, because the power fails in storms.
3. Warm socks, at least five pairs.
4. The attendance register, which the council will send by post.

In the evening she added up her expenses: the ticket cost 34.50, the room costs 410 a month, and the stove uses about 12 kilograms of coal a week at 0.85 per kilogram. By her estimate she would save 1,275 by the end of the school year, if the roof did not leak.

User: Can you explain what a prime number is?
Assistant: A prime number is a whole number greater than 1 whose only divisors are 1 and itself. For example, 2, 3, 5, 7 and 11 are prime, while 9 is not, because it equals 3 times 3.
User: Then how would I check a number in code?
Assistant: Try dividing it by every number up to its square root; if none divides it evenly, it is prime.

def is_prime(n: int) -> bool:
    """Return True when n is a prime number."""
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True

primes = [n for n in range(50) if is_prime(n)]
print(f"{len(primes)} primes below 50: {primes}")

The next morning the children arrived one by one, shaking rain from their hoods, and stood in a line by the door as if waiting for permission to exist. Mara wrote her name on the board, then, after a moment, drew a small lighthouse beside it. A girl in the front row laughed, and the room, which had been holding its breath since March, let it out.
Notes from the harbour committee, fourth meeting of the winter season. Present: the harbour master, two members of the fishing cooperative, the schoolteacher, and a representative of the ferry company. The meeting opened at seven with a report on the breakwater. Storms in November moved several of the large stones near the northern end, and the engineer estimates the repair at eighteen thousand, of which the council will cover half. The cooperative asked whether the work could wait until the herring season is over; the harbour master replied that a second storm of the same strength could open a gap wide enough to flood the slipway. After some discussion the committee agreed to begin in February and to keep one berth free for the boats at all times.

The ferry company proposed a new timetable. From the first of March the morning crossing will leave at half past six instead of six, and a third crossing will be added on Saturdays between May and September. Several members pointed out that the later departure makes it impossible for workers to reach the mainland before eight. The representative promised to ask whether the old time could be kept on weekdays.

Recipe for the fish soup served at the harvest supper (serves eight):
- 1 kg of white fish, cut into pieces
- 2 onions and 3 carrots, chopped
- 4 potatoes, peeled and diced
- a bay leaf, salt, pepper, and a handful of parsley
- 1.5 litres of water and 200 ml of cream
Soften the onions in butter, add the carrots and potatoes, pour in the water and simmer for twenty minutes. Add the fish for the last eight minutes, then the cream, and do not let it boil again.

Dear Mrs Halloran,
Thank you for your letter of the 12th and for the books, which arrived safely although the parcel was wet through. The children have already claimed the atlas. I have kept the dictionary on my own desk, where it will do the most good. If the council agrees, I should like to start a small lending library in the spring; the back room is dry now that the window has been mended.
With kind regards,
M. Lind

How the tide tables are computed. The height of the sea at a harbour is the sum of many regular waves, each caused by the motion of the moon or the sun, with its own period: the main lunar wave repeats every 12.42 hours, the main solar wave every 12 hours, and smaller ones every day or every fortnight. Measurements taken over a year fix the height and the timing of each wave at that harbour. Adding the waves together for any future date gives the predicted height; wind and air pressure then move the real sea by a few centimetres either way.

{"station": "north pier", "date": "2024-01-15", "readings": [{"time": "06:00", "height_m": 1.82}, {"time": "12:15", "height_m": 0.41}, {"time": "18:30", "height_m": 1.95}], "battery": "ok"}

| month | rainfall (mm) | windy days | ferry cancelled |
|---|---|---|---|
| October | 112 | 9 | 2 |
| November | 148 | 14 | 5 |
| December | 131 | 12 | 4 |

The lamp turns, the water moves,
the gulls come home before the dark;
a light that no one needs to see
is still a light, and leaves its mark.

User: My code prints the wrong total. Why?
Assistant: Show me the loop. A common cause is starting the sum at the wrong value or adding the same item twice.
User: for (int i = 0; i <= n; i++) total += values[i];
Assistant: The loop runs n + 1 times, so it reads one element past the end of the array. Use i < n instead.

#include <stdio.h>

static double mean(const double *x, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sum += x[i];
    }
    return n > 0 ? sum / n : 0.0;
}

int main(void) {
    const double heights[] = { 1.82, 0.41, 1.95, 0.38 };
    printf("mean height: %.3f m\n", mean(heights, 4));
    return 0;
}

To see why the average of a sum is the sum of the averages, write the expected value of X + Y as the integral of (x + y) over their joint distribution, split the integral in two, and integrate out the other variable in each part: E[X + Y] = E[X] + E[Y], whether or not X and Y are independent. The same is not true of the variance, which gains a term 2 Cov(X, Y).

In March the first lambs appeared on the hill farms, and the school held its spring concert in the church hall. Eleven children sang, two played the recorder, and one recited a poem about the lighthouse that she had written herself. The piano, tuned at last by a man who came over on the Saturday ferry, sounded almost new. Afterwards the parents stayed to drink tea and argue about the breakwater, and Mara, walking home along the only road, noticed for the first time that the wind had turned to the south.
By April the road had been resurfaced as far as the old quarry, and the post office announced that it would open on Mondays as well. The children planted potatoes behind the school, measured the rain in a jam jar every morning, and drew graphs that showed, to everyone's satisfaction, that April was wetter than March. One boy asked why the sea was salty when the rain was not. Mara admitted that she did not know the whole answer, wrote the question on the board, and promised that they would find out together: rivers carry a little salt from the rocks, the sun lifts the water back into the clouds, and the salt stays behind, year after year, for longer than anyone can count.
)TQCALIB";
