"""Call the extension from three threads; each releases the GIL while it churns."""

import threading

import ring

results: list[tuple[int, int]] = []
threads = [threading.Thread(target=lambda: results.append(ring.churn(1000))) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
misaligned = sum(m for m, _ in results)
allocs = ring.churn(0)[1]
print(f"{allocs} objects allocated from C threads without the GIL, {misaligned} misaligned")
assert misaligned == 0 and allocs == 3000
