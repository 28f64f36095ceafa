// Release build only (FUSEDLOSS_PORTABLE, see [Note portable wheel] in
// CMakeLists.txt): lets a module linked on a newer glibc load on glibc 2.28
// (manylinux_2_28). Built without LTO, which drops .symver directives.
//
// The definitions below satisfy, at link time, the references of this module
// (ours and those of the static libstdc++ objects linked in); the version
// script (exports.map) keeps them out of the module's exported symbols, so the
// rest of the process never sees them. Each block is guarded by the glibc
// version that added the newer symbol: on glibc 2.28 nothing is defined.
#include <features.h>

#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#include <pthread.h>
#include <sys/random.h>

#include <cstdint>

#if defined(__x86_64__)
#define FUSEDLOSS_GLIBC_FIRST "GLIBC_2.2.5"
#else
#define FUSEDLOSS_GLIBC_FIRST "GLIBC_2.17"
#endif

// `name` defined as a call to the first version of `first`, which every glibc
// since has kept: libm's exp/log/pow (new versions in 2.29) and hypot (2.35)
// changed only how they set errno, which nothing here reads; pthread_once
// moved from libpthread into libc in 2.34; glibc 2.38 gave strtol & co. C23
// twins (that also read "0b" prefixes), which code built with _GNU_SOURCE calls,
// and every number fusedloss parses reads the same with the first versions.
#define FUSEDLOSS_AS_FIRST_VERSION_OF(ret, name, first, params, args)            \
  extern "C" ret fusedloss_first_##name params;                                 \
  __asm__(".symver fusedloss_first_" #name "," #first "@" FUSEDLOSS_GLIBC_FIRST); \
  extern "C" ret name params { return fusedloss_first_##name args; }
#define FUSEDLOSS_FIRST_VERSION_OF(ret, name, params, args) \
  FUSEDLOSS_AS_FIRST_VERSION_OF(ret, name, name, params, args)

#if __GLIBC_PREREQ(2, 29)
FUSEDLOSS_FIRST_VERSION_OF(double, exp, (double x), (x))
FUSEDLOSS_FIRST_VERSION_OF(double, log, (double x), (x))
FUSEDLOSS_FIRST_VERSION_OF(double, pow, (double x, double y), (x, y))
#endif
#if __GLIBC_PREREQ(2, 35)
FUSEDLOSS_FIRST_VERSION_OF(double, hypot, (double x, double y), (x, y))
#endif
#if __GLIBC_PREREQ(2, 34)
FUSEDLOSS_FIRST_VERSION_OF(int, pthread_once, (pthread_once_t * once, void (*init)(void)),
                           (once, init))
#endif
#if __GLIBC_PREREQ(2, 38)
#define FUSEDLOSS_STRTO(ret, name)                                               \
  FUSEDLOSS_AS_FIRST_VERSION_OF(ret, __isoc23_##name, name,                     \
                                (const char* s, char** end, int base), (s, end, base))
FUSEDLOSS_STRTO(long, strtol)
FUSEDLOSS_STRTO(unsigned long, strtoul)
FUSEDLOSS_STRTO(long long, strtoll)
FUSEDLOSS_STRTO(unsigned long long, strtoull)
#endif

extern "C" {
#if __GLIBC_PREREQ(2, 32)
// libstdc++ reads this to skip atomic reference counts and locks in a
// single-threaded process; "never single-threaded" keeps the atomic path,
// which is always correct.
char __libc_single_threaded = 0;
#endif

#if __GLIBC_PREREQ(2, 36)
// Referenced by std::random_device in the static libstdc++, which fusedloss
// never constructs; getentropy (glibc 2.25) gives the same kind of bytes.
uint32_t arc4random(void) {
  uint32_t value;
  if (getentropy(&value, sizeof value) != 0) __builtin_trap();
  return value;
}
#endif
}

#endif  // glibc on x86_64 / aarch64
