/* topic.h - length-bounded variants of ab_topic_check / ab_agent_name_check
 * (agentbus.h) for names that are views into a received header. */
#ifndef AB_TOPIC_H
#define AB_TOPIC_H

#include <stddef.h>

int ab_topic_check_n(const char *topic, size_t len, int allow_prefix);
int ab_agent_name_check_n(const char *name, size_t len);

#endif
