# Writes kiln(1) from the built kiln: cmake -DKILN=path/to/kiln -DOUT=kiln.1 -P man.cmake
# (through a temporary file, so that a failed run leaves no half page behind).
execute_process(COMMAND ${KILN} --man OUTPUT_FILE ${OUT}.tmp RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(REMOVE ${OUT}.tmp)
  message(FATAL_ERROR "${KILN} --man failed: ${rc}")
endif()
file(RENAME ${OUT}.tmp ${OUT})
