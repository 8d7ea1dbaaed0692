/*
 * jit.cpp — the in-process JIT, in two halves. Compiling: generated C held in memory → Clang's
 * frontend → LLVM IR → Clang's -O2 pipeline → machine code for this CPU as an object file in
 * memory. Loading: that object file → ORC LLJIT → the program's address. Neither runs a process,
 * writes a file or reads a header. The halves are apart so that the object file can be kept in
 * the compiled-program cache (cache.c) and a later process only loads it.
 *
 * This is the project's only C++: libclang's C API can parse but not emit code, so the frontend is
 * driven through Clang's C++ API. Everything above it sees a few C functions (backend.h, section
 * jit.cpp) and plain C types.
 *
 * Hermetic: the generated code includes only <math.h>, <stdint.h> and <string.h>, for a handful
 * of types, macros and libm/libc declarations. Clang runs with -nostdsysteminc -nobuiltininc;
 * those #include lines are blanked (keeping line numbers) and a prelude standing in for the three
 * headers is put in front, followed by `#line 1 "step.c"` so diagnostics name generated lines.
 * Any other #include is refused. The libm functions are resolved in the process by ORC.
 *
 * Target: LLVM 14 does not know every host CPU by name (Zen 5 comes out as generic x86-64), so
 * Clang and the JIT's target machine both get the host's feature list, AVX-512 included.
 *
 * Threads: the generated code runs its parallel tasks through the kiln_exec its driver passes
 * (runtime/rt_pool.c), so there is no OpenMP here: no -fopenmp and no OpenMP runtime to bind.
 *
 * Errors: Clang's diagnostics go into a string (with the offending generated line and a caret),
 * LLVM's (optimiser, code generator) into another through the context's diagnostic handler, ORC's
 * through the session's error reporter; nothing is printed. An internal LLVM error, which ends the
 * process, is reported as kiln's bug rather than as "LLVM ERROR".
 *
 * The object file is exactly what LLJIT would have compiled itself: the target machine comes from
 * the same JITTargetMachineBuilder (host CPU and features, PIC, CodeGenOpt::Default, the JIT's
 * code model), so caching it changes neither the code nor the step's speed.
 */
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <algorithm>
#include <chrono>

#include <clang/Basic/Diagnostic.h>
#include <clang/Basic/DiagnosticOptions.h>
#include <clang/Basic/TargetInfo.h>
#include <clang/CodeGen/BackendUtil.h>
#include <clang/CodeGen/CodeGenAction.h>
#include <clang/Frontend/CompilerInstance.h>
#include <clang/Frontend/CompilerInvocation.h>
#include <clang/Frontend/TextDiagnosticPrinter.h>
#include <clang/Lex/PreprocessorOptions.h>
#include <llvm/ADT/SmallVector.h>
#include <llvm/ADT/StringMap.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/ExecutionEngine/Orc/ThreadSafeModule.h>
#include <llvm/IR/DiagnosticHandler.h>
#include <llvm/IR/DiagnosticInfo.h>
#include <llvm/IR/DiagnosticPrinter.h>
#include <llvm/IR/Constants.h>
#include <llvm/IR/InstrTypes.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/Support/ErrorHandling.h>
#include <llvm/Support/Host.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>

#ifndef KILN_LLVM_VERSION
#define KILN_LLVM_VERSION "14"
#endif

/* The same declarations as backend.h's jit.cpp section, which C++ cannot include
 * (base.h is C11). Only plain C types cross. */
extern "C" {
typedef struct JitProgram JitProgram;
typedef struct JitTimes {
  double clang, optimise, codegen;
} JitTimes;
const char *jit_identity(void);
int jit_compile_object(const char *c_source, const char *opt_flag, void **object, size_t *size,
                       JitTimes *times, char **err);
JitProgram *jit_load_object(const void *object, size_t size, const char *symbol, void **address,
                            char **err);
void jit_free(JitProgram *p);
const char *jit_version(void);
}

/* What the generated code takes from <stdint.h>, <math.h> and <string.h>. */
static const char prelude[] =
    "typedef signed char int8_t; typedef unsigned char uint8_t;\n"
    "typedef short int16_t; typedef unsigned short uint16_t;\n"
    "typedef int int32_t; typedef unsigned int uint32_t;\n"
    "typedef long int64_t; typedef unsigned long uint64_t;\n"
    "typedef long intptr_t; typedef unsigned long uintptr_t;\n"
    "typedef unsigned long size_t; typedef long ptrdiff_t;\n"
    "#define NULL ((void *)0)\n"
    "#define INT32_C(c) c\n#define UINT32_C(c) c##U\n"
    "#define INT64_C(c) c##L\n#define UINT64_C(c) c##UL\n"
    "#define INT32_MAX 2147483647\n#define INT32_MIN (-INT32_MAX - 1)\n"
    "#define UINT32_MAX 4294967295U\n"
    "#define INT64_MAX 9223372036854775807L\n#define INT64_MIN (-INT64_MAX - 1)\n"
    "#define UINT64_MAX 18446744073709551615UL\n#define SIZE_MAX UINT64_MAX\n"
    "#define INFINITY (__builtin_inff())\n#define NAN (__builtin_nanf(\"\"))\n"
    "#define HUGE_VAL (__builtin_huge_val())\n"
    "#define isnan(x) __builtin_isnan(x)\n#define isinf(x) __builtin_isinf(x)\n"
    "#define isfinite(x) __builtin_isfinite(x)\n#define signbit(x) __builtin_signbit(x)\n"
#define KILN_LIBM1(f) "double " #f "(double); float " #f "f(float);\n"
#define KILN_LIBM2(f) "double " #f "(double, double); float " #f "f(float, float);\n"
    KILN_LIBM1(exp) KILN_LIBM1(expm1) KILN_LIBM1(log) KILN_LIBM1(log1p) KILN_LIBM1(sqrt)
    KILN_LIBM1(tanh) KILN_LIBM1(fabs) KILN_LIBM1(round) KILN_LIBM1(floor) KILN_LIBM1(ceil)
    KILN_LIBM1(sin) KILN_LIBM1(cos) KILN_LIBM1(erf) KILN_LIBM2(pow) KILN_LIBM2(fmax)
    KILN_LIBM2(fmin)
    "double fma(double, double, double); float fmaf(float, float, float);\n"
    "void *memcpy(void *restrict, const void *restrict, size_t);\n"
    "void *memmove(void *, const void *, size_t);\n"
    "void *memset(void *, int, size_t);\n"
    "int memcmp(const void *, const void *, size_t);\n"
    "#line 1 \"step.c\"\n";
#undef KILN_LIBM1
#undef KILN_LIBM2

struct JitProgram {
  std::string errors;                    /* ORC's reports; outlives the JIT that writes it */
  std::unique_ptr<llvm::orc::LLJIT> jit;
};

static char *dup_message(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p)
    std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

static bool fail(char **err, const std::string &msg) {
  *err = dup_message(msg);
  return false;
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/* The prelude, then the source with its (known) system #include lines blanked. */
static bool hermetic_source(const char *src, std::string &out, std::string &why) {
  out = prelude;
  int line = 1;
  for (const char *p = src; *p; line++) {
    const char *e = std::strchr(p, '\n');
    size_t n = e ? (size_t)(e - p) : std::strlen(p);
    std::string l(p, n);
    size_t i = l.find_first_not_of(" \t");
    if (i != std::string::npos && l[i] == '#' &&
        l.find_first_not_of(" \t", i + 1) != std::string::npos &&
        l.compare(l.find_first_not_of(" \t", i + 1), 7, "include") == 0) {
      if (l.find("<math.h>") == std::string::npos && l.find("<stdint.h>") == std::string::npos &&
          l.find("<string.h>") == std::string::npos) {
        why = "step.c:" + std::to_string(line) +
              ": error: the JIT gives generated code no header but <math.h>, <stdint.h> and "
              "<string.h>\n" + l + "\n";
        return false;
      }
      l.clear();
    }
    out += l;
    out += '\n';
    p += n + (e ? 1 : 0);
  }
  return true;
}

static std::once_flag init_once;

static void init_llvm() {
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  llvm::InitializeNativeTargetAsmParser();
}

/* Where the program's undefined symbols (libm, mem*) come from: the process. */
static llvm::Error add_symbol_sources(llvm::orc::LLJIT &jit) {
  llvm::orc::JITDylib &jd = jit.getMainJITDylib();
  char prefix = jit.getDataLayout().getGlobalPrefix();
  auto gen = llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(prefix);
  if (!gen)
    return gen.takeError();
  jd.addGenerator(std::move(*gen));
  return llvm::Error::success();
}

/* "+avx2", "-avx512f", ... for every feature the host CPU reports. */
static std::vector<std::string> host_features() {
  std::vector<std::string> v;
  llvm::StringMap<bool> m;
  if (llvm::sys::getHostCPUFeatures(m))
    for (auto &f : m)
      v.push_back((f.second ? "+" : "-") + f.first().str());
  return v;
}

/* The target machine both the compiling and the loading half use: this CPU by name and by
 * features, PIC, CodeGenOpt::Default. The object file is compiled for exactly the machine that
 * LLJIT would have compiled the IR for. */
static llvm::Expected<llvm::orc::JITTargetMachineBuilder>
host_machine(const std::vector<std::string> &features) {
  auto jtmb = llvm::orc::JITTargetMachineBuilder::detectHost();
  if (!jtmb)
    return jtmb.takeError();
  jtmb->setCPU(llvm::sys::getHostCPUName().str());
  jtmb->getFeatures() = llvm::SubtargetFeatures();
  jtmb->addFeatures(features);
  jtmb->setRelocationModel(llvm::Reloc::PIC_);
  jtmb->setCodeGenOptLevel(llvm::CodeGenOpt::Default);
  return jtmb;
}

/* LLVM's own diagnostics (optimiser, code generator) would go to stderr, and an error would end
 * the process: errors are kept for the message, warnings and remarks dropped (Clang's driver
 * shows none of them without -R or -W flags either). */
struct KeepErrors : llvm::DiagnosticHandler {
  std::string *errors;
  explicit KeepErrors(std::string *e) : errors(e) {}
  bool handleDiagnostics(const llvm::DiagnosticInfo &di) override {
    if (di.getSeverity() == llvm::DS_Error) {
      llvm::raw_string_ostream os(*errors);
      llvm::DiagnosticPrinterRawOStream printer(os);
      di.print(printer);
      os << "\n";
    }
    return true;
  }
};

/* Clang's frontend (without LLVM passes), then the optimisation pipeline Clang would have run
 * over the module for this opt level, timed apart. */
static std::unique_ptr<llvm::Module> compile_to_ir(const std::string &src, const char *level,
                                                   const std::vector<std::string> &features,
                                                   llvm::LLVMContext &ctx, std::string &diag,
                                                   JitTimes *times) {
  auto t0 = std::chrono::steady_clock::now();
  llvm::raw_string_ostream dos(diag);
  auto diagopts = llvm::makeIntrusiveRefCnt<clang::DiagnosticOptions>();
  diagopts->ShowPresumedLoc = true; /* lines as #line numbers them: the generated file's own */
  clang::TextDiagnosticPrinter printer(dos, diagopts.get());
  clang::CompilerInstance ci;
  ci.createDiagnostics(&printer, /*ShouldOwnClient=*/false);

  std::string triple = llvm::sys::getProcessTriple();
  std::string cpu = llvm::sys::getHostCPUName().str();
  std::vector<const char *> args = {
      "-triple", triple.c_str(), "-target-cpu", cpu.c_str(),
      /* No contraction but where the generated code asks for it (the GEMM micro-kernel), as the
       * cc backend compiles: the two backends give the same bits (cg_gemm.c). */
      "-ffp-contract=off",
      level, "-vectorize-loops", "-vectorize-slp",
      /* The generated code picks its vector-type kernels under __GNUC__. */
      "-fgnuc-version=4.2.1", "-std=c11",
      "-nostdsysteminc", "-nobuiltininc", "-mrelocation-model", "pic", "-pic-level", "2",
      "-main-file-name", "step.c", "-x", "c", "step.c"};
  for (auto &f : features) {
    args.insert(args.begin() + 4, f.c_str());
    args.insert(args.begin() + 4, "-target-feature");
  }
  if (!clang::CompilerInvocation::CreateFromArgs(ci.getInvocation(), args, ci.getDiagnostics()))
    return nullptr;
  /* ExecuteAction prints "N errors generated" to stderr when carets are on; our printer keeps
   * its own options, carets included. */
  ci.getDiagnosticOpts().ShowCarets = false;
  /* The buffer refers to src, which outlives the compile; the source manager frees the buffer. */
  ci.getPreprocessorOpts().addRemappedFile(
      "step.c", llvm::MemoryBuffer::getMemBuffer(src, "step.c").release());
  /* Clang's code generation alone: the -O level still shapes the IR (TBAA, lifetime markers,
   * inlining attributes), but the passes run below, where they can be timed. */
  ci.getCodeGenOpts().DisableLLVMPasses = true;
  clang::EmitLLVMOnlyAction act(&ctx);
  if (!ci.ExecuteAction(act))
    return nullptr;
  std::unique_ptr<llvm::Module> mod = act.takeModule();
  if (!mod)
    return nullptr;
  times->clang = seconds_since(t0);

  /* The pipeline EmitLLVMOnlyAction would have run: Clang's own, with nothing emitted. The
   * printer takes diagnostics only inside a source file. */
  t0 = std::chrono::steady_clock::now();
  ci.getCodeGenOpts().DisableLLVMPasses = false;
  printer.BeginSourceFile(ci.getLangOpts(), nullptr);
  clang::EmitBackendOutput(ci.getDiagnostics(), ci.getHeaderSearchOpts(), ci.getCodeGenOpts(),
                           ci.getTargetOpts(), ci.getLangOpts(),
                           ci.getTarget().getDataLayoutString(), mod.get(),
                           clang::Backend_EmitNothing, nullptr);
  printer.EndSourceFile();
  times->optimise = seconds_since(t0);
  if (ci.getDiagnostics().hasErrorOccurred())
    return nullptr;
  return mod;
}

/* Machine code for mod as a relocatable object file, through the target machine LLJIT's own
 * compiler would use. */
static bool emit_object(llvm::Module &mod, const std::vector<std::string> &features,
                        llvm::SmallVectorImpl<char> &object, std::string &why) {
  auto jtmb = host_machine(features);
  if (!jtmb) {
    why = llvm::toString(jtmb.takeError()) + "\n";
    return false;
  }
  auto tm = jtmb->createTargetMachine();
  if (!tm) {
    why = llvm::toString(tm.takeError()) + "\n";
    return false;
  }
  llvm::raw_svector_ostream os(object);
  llvm::legacy::PassManager pm;
  if ((*tm)->addPassesToEmitFile(pm, os, nullptr, llvm::CGFT_ObjectFile)) {
    why = "the target cannot emit object files\n";
    return false;
  }
  pm.run(mod);
  return true;
}

/* LLVM ends the process on an internal error (report_fatal_error), which no caller can recover
 * from; while kiln compiles, the last words are kiln's, saying whose bug it is, not "LLVM ERROR". */
static void llvm_fatal(void *, const char *reason, bool) {
  std::string msg = std::string("kiln: internal error: LLVM failed on generated code (a bug in "
                                "kiln's code generator): ") + reason + "\n";
  ssize_t n = write(2, msg.data(), msg.size());
  (void)n;
}

static bool compile(const char *c_source, const char *opt_flag, void **object, size_t *size,
                    JitTimes *times, char **err) {
  std::call_once(init_once, init_llvm);
  llvm::ScopedFatalErrorHandler last_words(llvm_fatal, nullptr);
  std::string src, why;
  if (!hermetic_source(c_source, src, why))
    return fail(err, why);
  std::vector<std::string> features = host_features();

  std::string llvm_errors; /* declared first: the context's handler writes here until its end */
  llvm::LLVMContext ctx;
  ctx.setDiagnosticHandler(std::make_unique<KeepErrors>(&llvm_errors));
  std::string diag;
  std::unique_ptr<llvm::Module> mod =
      compile_to_ir(src, opt_flag, features, ctx, diag, times);
  if (!mod) {
    diag += llvm_errors;
    return fail(err, diag.empty() ? "clang failed without a message\n" : diag);
  }

  auto t0 = std::chrono::steady_clock::now();
  llvm::SmallVector<char, 0> obj;
  if (!emit_object(*mod, features, obj, why))
    return fail(err, why);
  times->codegen = seconds_since(t0);
  if (!llvm_errors.empty())
    return fail(err, llvm_errors);
  *object = std::malloc(obj.size());
  if (!*object)
    return fail(err, "out of memory\n");
  std::memcpy(*object, obj.data(), obj.size());
  *size = obj.size();
  return true;
}

static bool load(JitProgram *p, const void *object, size_t size, const char *symbol,
                 void **address, char **err) {
  std::call_once(init_once, init_llvm);
  auto jtmb = host_machine(host_features());
  if (!jtmb)
    return fail(err, llvm::toString(jtmb.takeError()) + "\n");
  auto jit = llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(std::move(*jtmb)).create();
  if (!jit)
    return fail(err, llvm::toString(jit.takeError()) + "\n");
  p->jit = std::move(*jit);
  /* Errors met while materialising would go to stderr; they come back through the lookup. */
  std::string *session_errors = &p->errors;
  p->jit->getExecutionSession().setErrorReporter([session_errors](llvm::Error e) {
    *session_errors += llvm::toString(std::move(e)) + "\n";
  });
  if (auto e = add_symbol_sources(*p->jit))
    return fail(err, llvm::toString(std::move(e)) + "\n");
  /* A copy: the caller keeps its bytes, the linking layer owns these. */
  auto buffer = llvm::MemoryBuffer::getMemBufferCopy(
      llvm::StringRef(static_cast<const char *>(object), size), "step.o");
  if (auto e = p->jit->addObjectFile(std::move(buffer)))
    return fail(err, llvm::toString(std::move(e)) + "\n");
  auto sym = p->jit->lookup(symbol);
  if (!sym)
    return fail(err, p->errors + llvm::toString(sym.takeError()) + "\n");
  *address = reinterpret_cast<void *>(static_cast<uintptr_t>(sym->getAddress()));
  return true;
}

/* Everything besides the source and the -O level that decides the object file's bytes and
 * whether it links here: LLVM's version, the target (triple, CPU name, features),
 * the code generator's settings, the prelude. A change to any gives a different cache key. */
static std::string identity;

static void compute_identity() {
  std::call_once(init_once, init_llvm);
  std::vector<std::string> features = host_features();
  std::sort(features.begin(), features.end());
  identity = "jit 1; LLVM " KILN_LLVM_VERSION "; triple " + llvm::sys::getProcessTriple() +
             "; cpu " + llvm::sys::getHostCPUName().str() + "; features";
  for (auto &f : features)
    identity += " " + f;
  identity += "; codegen default pic jit-code-model; prelude\n";
  identity += prelude;
}

extern "C" const char *jit_identity(void) {
  static std::once_flag once;
  std::call_once(once, compute_identity);
  return identity.c_str();
}

extern "C" int jit_compile_object(const char *c_source, const char *opt_flag, void **object,
                                  size_t *size, JitTimes *times, char **err) {
  *object = nullptr;
  *size = 0;
  *err = nullptr;
  *times = JitTimes{0, 0, 0};
  return compile(c_source, opt_flag, object, size, times, err) ? 0 : -1;
}

extern "C" JitProgram *jit_load_object(const void *object, size_t size, const char *symbol,
                                       void **address, char **err) {
  *address = nullptr;
  *err = nullptr;
  JitProgram *p = new (std::nothrow) JitProgram;
  if (!p) {
    *err = dup_message("out of memory\n");
    return nullptr;
  }
  if (!load(p, object, size, symbol, address, err)) {
    delete p;
    return nullptr;
  }
  return p;
}

extern "C" void jit_free(JitProgram *p) { delete p; }

extern "C" const char *jit_version(void) { return "LLVM " KILN_LLVM_VERSION; }
