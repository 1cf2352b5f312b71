// DLPack export and import in C++: no copies, shapes and strides kept, owners released.
#include "testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Tensor;

TEST(DLPack, RoundTripSharesMemoryAndReleasesOnce) {
  Tensor t = mt::testing::randn({3, 8}, DType::f32).slice(1, 1, 8, 2);  // strided view
  DLManagedTensorVersioned* m = mt::to_dlpack_versioned(t);
  EXPECT_EQ(m->version.major, 1u);
  EXPECT_EQ(m->dl_tensor.ndim, 2);
  EXPECT_EQ(m->dl_tensor.strides[1], 2);
  EXPECT_EQ(m->dl_tensor.dtype.code, kDLFloat);
  int released = 0;
  {
    auto owner = std::shared_ptr<void>(m, [&released](void* p) {
      auto* mt_ = static_cast<DLManagedTensorVersioned*>(p);
      mt_->deleter(mt_);
      ++released;
    });
    Tensor back = mt::from_dlpack(m->dl_tensor, owner);
    EXPECT_EQ(back.data_ptr(), t.data_ptr());
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(back.strides(), t.strides());
    EXPECT_EQ(mt::testing::values(back), mt::testing::values(t));
    owner.reset();
    EXPECT_EQ(released, 0);  // `back` still holds it
  }
  EXPECT_EQ(released, 1);
}

TEST(DLPack, DtypeCodes) {
  for (int i = 0; i < mt::kNumDTypes; ++i) {
    auto dt = static_cast<DType>(i);
    EXPECT_EQ(mt::from_dlpack_dtype(mt::to_dlpack_dtype(dt)), dt);
  }
  try {
    mt::from_dlpack_dtype({kDLComplex, 64, 1});
    FAIL();
  } catch (const mt::TypeError& e) {
    EXPECT_NE(std::string(e.what()).find("complex64 is not supported"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mt::from_dlpack_dtype({kDLBool, 8, 1}), mt::TypeError);
  EXPECT_THROW(mt::from_dlpack_dtype({kDLFloat, 32, 4}), mt::TypeError);
}
