/*
 * pubsub.h - agentbus-bench --pubsub: topic fan-out through the broker
 * against bare ZeroMQ PUB/SUB (direct, and through an XSUB/XPUB proxy), and
 * agent-to-agent request/reply against service request/reply, all measured
 * in the same run.
 */
#ifndef BN_BENCH_PUBSUB_H
#define BN_BENCH_PUBSUB_H

/* Runs the bench; ARGV as given to agentbus-bench. Returns the exit code. */
int bn_pubsub_main(int argc, char **argv, const char *broker_bin, const char *worker_bin);

#endif
