/*
 * topic.c - syntax of agent names and topics, shared by the library (which
 * refuses a bad name before sending) and the broker (which never trusts
 * one). Both sides use the same function, so they never disagree.
 */
#include "agentbus.h"

#include <string.h>

#define AB_TOPIC_MAX 255
#define AB_TOPIC_LABELS_MAX 16
#define AB_TOPIC_LABEL_MAX 64
#define AB_AGENT_NAME_MAX 255

static int s_label_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-' || ch == ':';
}

/* Checks LEN bytes at T: labels separated by single dots; with ALLOW_PREFIX
 * one trailing dot is allowed (a prefix pattern). */
static int s_topic_check_n(const char *t, size_t len, int allow_prefix)
{
    if (!t || len == 0 || len > AB_TOPIC_MAX)
        return AB_EBADNAME;
    size_t label = 0, labels = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch == '.') {
            if (label == 0) /* leading dot or ".." */
                return AB_EBADNAME;
            labels++;
            label = 0;
            if (i + 1 == len && !allow_prefix)
                return AB_EBADNAME;
            continue;
        }
        if (!s_label_char(ch) || ++label > AB_TOPIC_LABEL_MAX)
            return AB_EBADNAME;
    }
    if (label)
        labels++;
    return labels <= AB_TOPIC_LABELS_MAX ? AB_OK : AB_EBADNAME;
}

int ab_topic_check(const char *topic, int allow_prefix)
{
    return topic ? s_topic_check_n(topic, strlen(topic), allow_prefix) : AB_EINVAL;
}

int ab_topic_check_n(const char *topic, size_t len, int allow_prefix)
{
    return s_topic_check_n(topic, len, allow_prefix);
}

int ab_agent_name_check_n(const char *name, size_t len)
{
    if (!name || len == 0 || len > AB_AGENT_NAME_MAX || name[0] == '~')
        return AB_EBADNAME;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] <= 0x20 || (unsigned char)name[i] >= 0x7f)
            return AB_EBADNAME;
    return AB_OK;
}

int ab_agent_name_check(const char *name)
{
    return name ? ab_agent_name_check_n(name, strlen(name)) : AB_EINVAL;
}
