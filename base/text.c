/* text.c - see text.h. */
#include "text.h"

#include <string.h>

size_t ab_utf8_seq(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
             : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    unsigned char lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    for (size_t i = 1; i < n; i++)
        if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF))
            return 0;
    return n;
}

/* ab_text_clean, and with KEEP_CONTROLS ab_text_utf8. */
static size_t s_clean(const char *in, size_t len, char *out, size_t cap, int keep_controls)
{
    static const char repl[] = "\xEF\xBF\xBD"; /* U+FFFD */
    size_t o = 0, i = 0;
    while (i < len) {
        const unsigned char *s = (const unsigned char *)in + i;
        unsigned char c = s[0];
        /* a sequence must end inside LEN: bound the check by what is left */
        unsigned char tmp[5] = {0};
        memcpy(tmp, s, len - i < 4 ? len - i : 4);
        size_t seq = c ? ab_utf8_seq(tmp) : 0;
        int control = keep_controls ? 0
                    : seq == 1 ? (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f
                    : seq == 2 && c == 0xC2 && s[1] < 0xA0;
        const char *put = seq && !control ? (const char *)s : repl;
        size_t n = seq && !control ? seq : 3;
        if (o + n >= cap)
            break;
        memcpy(out + o, put, n);
        o += n;
        i += seq ? seq : 1;
    }
    out[o] = '\0';
    return o;
}

size_t ab_text_clean(const char *in, size_t len, char *out, size_t cap)
{
    return s_clean(in, len, out, cap, 0);
}

size_t ab_text_utf8(const char *in, size_t len, char *out, size_t cap)
{
    return s_clean(in, len, out, cap, 1);
}
