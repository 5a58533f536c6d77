// Forwarding header: the status macros live in base/status.h. Kept so that
// packages still including it (core/model, core/optimizer, core/lora, dist/,
// jobs/, tests/reference_dump) build while their owners move; new code
// includes "base/status.h".
#ifndef SHEAF_CORE_STATUS_H_
#define SHEAF_CORE_STATUS_H_

#include "base/status.h"  // IWYU pragma: export

#endif  // SHEAF_CORE_STATUS_H_
