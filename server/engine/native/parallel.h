/* When a kernel call is worth threads: the multiply-adds below which it runs on the calling thread.
 *
 * A parallel region needs every OpenMP worker to wake and reach its barrier. On a quiet machine
 * that costs microseconds; when another process holds one of the cores, the region waits for the
 * scheduler to give the descheduled worker a time slice, and a small model's decode step (hundreds
 * of calls of a few thousand multiply-adds each) ran 3x slower through the server on a 2-core VM
 * with one core busy, where one thread lost nothing. The bound, 2^18 multiply-adds (~25 us on one
 * AVX2 core), keeps every call of a 128-wide model's decode step on one thread, and still splits a
 * 576-wide model's projections and attention (a 1M bound made SmolLM2-135M's decode step 12% slower
 * on a quiet 2-core VM: its key/value projections and attention fell below it). Threads never
 * change a result: every output is computed by the same instructions in the same order whichever
 * thread runs it.
 */
#ifndef ADAPTERHUB_PARALLEL_H
#define ADAPTERHUB_PARALLEL_H
#define PARALLEL_MIN_WORK ((int64_t)1 << 18)
#endif
